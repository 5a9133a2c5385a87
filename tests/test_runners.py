"""Production runners, checked as deep as this machine allows: Dataflow by staging a template
(the full job description, written to the GCS emulator, not submitted), Flink through the
portable Job API against Beam's own job service, and the files both depend on."""

import argparse
import io
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from google.cloud import storage

from pipeline.options import LabelerOptions
from tests.gcs_servers import free_port
from tests.portable_services import PortableServices
from tests.runs import ROOT, cli_env, read_rows

pytestmark = pytest.mark.slow  # every test here runs the real command

IMAGE = "us-docker.pkg.dev/test-project/labeler/image-labeler:1"


def script(
    name: str, *args: str, timeout: int = 300, env: dict | None = None, cwd=None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(pathlib.Path(ROOT) / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env() | (env or {}),
        cwd=cwd,
    )


def stage_dataflow(bucket: str, *extra: str) -> subprocess.CompletedProcess:
    """run_dataflow.sh staging a template of a job over gs://BUCKET/images/ to the emulator."""
    return script(
        "run_dataflow.sh",
        "--project=test-project",
        f"--bucket={bucket}",
        f"--image={IMAGE}",
        f"--input=gs://{bucket}/images/*.jpg",
        f"--output=gs://{bucket}/out",
        f"--template_location=gs://{bucket}/templates/labeler.json",
        *extra,
    )


def upload_dir(local: str, bucket: str, prefix: str) -> str:
    target = storage.Client().bucket(bucket)
    for path in pathlib.Path(local).rglob("*"):
        if path.is_file():
            target.blob(f"{prefix}/{path.relative_to(local)}").upload_from_filename(str(path))
    return f"gs://{bucket}/{prefix}"


def declared_flags() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    LabelerOptions._add_argparse_args(parser)
    return {a.option_strings[0][2:]: a for a in parser._actions if a.option_strings[0] != "-h"}


@pytest.mark.parametrize("mode", ["gpu", "cpu"])
def test_dataflow_job_is_staged_as_a_template(mode, gcs, bucket, probe_model, sample_jpeg):
    storage.Client().bucket(bucket).blob("images/cat.jpg").upload_from_string(sample_jpeg)
    model = upload_dir(probe_model, bucket, "models/probe")
    template = f"gs://{bucket}/templates/labeler.json"
    proc = stage_dataflow(
        bucket,
        f"--model={model}",
        "--date=2025-06-01",
        "--labels=team=vision",  # Beam's Dataflow job labels, not the class names
        *(["--cpu"] if mode == "cpu" else []),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"job staged at {template}" in proc.stderr

    job = json.loads(
        storage.Client().bucket(bucket).blob("templates/labeler.json").download_as_text()
    )
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert job["labels"] == {"team": "vision"}
    assert options["labels_file"].endswith(
        "transforms/models/data/imagenet_labels.txt"
    )  # class names: default
    (pool,) = job["environment"]["workerPools"]
    experiments = job["environment"]["experiments"]
    assert options["sdk_container_image"] == IMAGE
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [IMAGE]
    assert "use_runner_v2" in experiments
    assert options["output"] == f"gs://{bucket}/out" and options["date"] == "2025-06-01"
    assert options["model"] == model
    if mode == "gpu":
        assert pool["machineType"] == "g2-standard-16"
        assert options["read_concurrency"] == 128
        assert options["number_of_worker_harness_threads"] == 4
        assert options["dataflow_service_options"] == [
            "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
        ]
        assert "no_use_multiple_sdk_containers" in experiments
        assert options["require_gpu"] is True
    else:
        assert pool["machineType"] == "n1-standard-4"
        assert not options.get("dataflow_service_options")
        assert "no_use_multiple_sdk_containers" not in experiments
        assert options["require_gpu"] is False

    # The staged package carries the code and the bundled labels: workers need no checkout.
    staging = storage.Client().bucket(bucket)
    (package,) = [
        b
        for b in staging.list_blobs(prefix="dataflow/staging/")
        if b.name.endswith("workflow.tar.gz")
    ]
    with tarfile.open(fileobj=io.BytesIO(package.download_as_bytes())) as tar:
        names = {re.sub(r"^[^/]+/", "", n) for n in tar.getnames()}
    for needed in [
        "pipeline/run.py",
        "transforms/models/handler.py",
        "transforms/storage/gcs.py",
        "transforms/models/data/imagenet_labels.txt",
        "requirements.txt",
    ]:
        assert needed in names


def test_flink_path_runs_through_the_job_api(image_dir, probe_model, tmp_path):
    """run_flink.sh against Beam's Python job service, workers from an EXTERNAL pool; relative
    paths from the folder it is run in (tests/test_entry_points.py: the other commands)."""
    services = PortableServices(str(tmp_path / "staging"), free_port(), free_port()).start()
    try:
        out = tmp_path / "out"
        proc = script(
            "run_flink.sh",
            f"--job_endpoint={services.job_endpoint}",
            f"--worker_pool={services.worker_pool}",
            "--input=images/patch_*.png",
            "--input=images/empty.jpg",
            "--output=out",
            f"--model={probe_model}",
            "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
            "--image_size=32",
            "--date=2025-06-02",
            cwd=tmp_path,  # image_dir['root'] is tmp_path/images
        )
    finally:
        services.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions, errors = read_rows(str(out), "predictions"), read_rows(str(out), "errors")
    assert sorted(r["uri"] for r in predictions) == sorted(image_dir["patches"])
    assert [(r["uri"], r["stage"]) for r in errors] == [
        (str(image_dir["root"] / "empty.jpg"), "decode")
    ]


def test_scripts_explain_themselves():
    for name in ["run_dataflow.sh", "run_flink.sh"]:
        helped = script(name, "--help")
        assert helped.returncode == 0 and "Usage: ./" + name in helped.stdout
        missing = script(name)
        assert missing.returncode == 2 and "error:" in missing.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments out."""
    text = (pathlib.Path(ROOT) / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [tuple(line.split(None, 1)) for line in joined.splitlines() if line.strip()]


def test_dockerfile_versions_agree_with_requirements():
    instructions = dockerfile_instructions()
    pins = dict(
        line.split("==")
        for line in (pathlib.Path(ROOT) / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG")
    assert args["BEAM_VERSION"] == pins["apache-beam[gcp]"]
    # One Python for the launching machine, the workers and the template launcher.
    assert args["PYTHON_VERSION"] == (pathlib.Path(ROOT) / ".python-version").read_text().strip()
    stages = [a for kind, a in instructions if kind == "FROM"]
    launcher = re.search(r"python(\d)(\d+)-template-launcher-base", stages[1])
    assert f"{launcher[1]}.{launcher[2]}" == args["PYTHON_VERSION"]
    assert stages[-1] == "python:${PYTHON_VERSION}-slim"
    assert ("ENTRYPOINT", '["/opt/apache/beam/boot"]') in instructions


def test_dockerfile_build_steps_install_the_pinned_packages_and_this_code(tmp_path):
    """The final stage's COPY and RUN steps, run without Docker: the files COPY brings go into
    a build context, RUN runs there with bash and a `pip` that records its arguments, and
    the `pip install .` it asks for is then built for real (a wheel) from that context alone."""
    instructions = dockerfile_instructions()
    final = instructions[max(i for i, (k, _) in enumerate(instructions) if k == "FROM") :]
    context = tmp_path / "context"
    for kind, arguments in final:
        if kind == "COPY" and not arguments.startswith("--from"):
            *sources, target = arguments.split()
            for source in sources:
                destination = context / target / (source if target == "./" else "")
                if (pathlib.Path(ROOT) / source).is_dir():
                    shutil.copytree(pathlib.Path(ROOT) / source, destination)
                else:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(pathlib.Path(ROOT) / source, destination)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "pip").write_text('#!/bin/sh\necho "$*" >> "$PIP_LOG"\n')
    (fake_bin / "pip").chmod(0o755)
    log = tmp_path / "pip.log"
    (run,) = [a for kind, a in final if kind == "RUN"]
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "PIP_LOG": str(log)}
    subprocess.run(["bash", "-ec", run], cwd=context, env=env, check=True)

    pins = (pathlib.Path(ROOT) / "requirements.txt").read_text()
    tensorflow = re.search(r"^tensorflow==(\S+)$", pins, re.M)[1]
    assert log.read_text().splitlines() == [
        f"install --no-cache-dir -r requirements.txt tensorflow[and-cuda]=={tensorflow}",
        "install --no-cache-dir --no-deps .",
        "check",
    ]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), "."],
        cwd=context,
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("beam_image_labeler-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for module in (
        "pipeline/run.py",
        "pipeline/report/__main__.py",
        "transforms/models/lite0.py",
        "transforms/storage/uris.py",
        "transforms/vocabulary.py",
    ):
        assert module in names
    assert "transforms/models/data/imagenet_labels.txt" in names
    assert "label-images = pipeline.run:main" in entry_points


def test_flex_template_metadata_lists_the_pipeline_options():
    metadata = json.loads((pathlib.Path(ROOT) / "flex_template" / "metadata.json").read_text())
    parameters = {p["name"]: p for p in metadata["parameters"]}
    # The progress display and --plan are for a terminal on the machine that runs the command;
    # portions are for runners this process waits on (a Dataflow job is one job).
    local_only = ("quiet", "progress_interval", "plan", "plan_sample", "portion_seconds")
    flags = {k: v for k, v in declared_flags().items() if k not in local_only}
    assert set(parameters) == set(flags)
    for name, parameter in parameters.items():
        assert parameter["label"] and parameter["helpText"]
        assert parameter["isOptional"] == (name != "output")
        for regex in parameter.get("regexes", []):  # the flag's default passes its own regex
            default = flags[name].default
            if default is not None and name != "labels_file":
                assert re.fullmatch(regex, str(default).lower()), (name, regex)


def test_python_requires_is_the_project_s_one_python():
    """setup.py's minimum is the project's one Python (.python-version, also the workers' and
    the template launcher's): the code uses 3.11 APIs (datetime.UTC), so it must not install
    on 3.10."""
    import ast

    version = (pathlib.Path(ROOT) / ".python-version").read_text().strip()
    setup = ast.parse((pathlib.Path(ROOT) / "setup.py").read_text())
    (requires,) = [
        k.value.value
        for n in ast.walk(setup)
        if isinstance(n, ast.Call)
        for k in n.keywords
        if k.arg == "python_requires"
    ]
    assert requires == f">={version}"


def test_dataflow_labels_with_b3_and_never_falls_back(tmp_path):
    """run_dataflow.sh pins EfficientNet-B3: with TF Hub out of reach (a proxy nobody listens
    on and an empty TF Hub cache, so also on machines with the internet) and no --model, it
    stops at start-up instead of labelling production data with Lite0. (Local input and
    output: the model check fails before anything would reach Dataflow.)"""
    dead = "http://127.0.0.1:9"
    unreachable = {"TFHUB_CACHE_DIR": str(tmp_path / "tfhub"), "https_proxy": dead}
    proc = script(
        "run_dataflow.sh",
        "--project=test-project",
        "--bucket=unused-bucket",
        f"--image={IMAGE}",
        f"--input={ROOT}/samples/*.jpg",
        f"--output={tmp_path}/out",
        env={**unreachable, "HTTPS_PROXY": dead},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith(
        "python -m pipeline.run: error: cannot download the model "
        "https://tfhub.dev/tensorflow/efficientnet/b3/classification/1"
    )
    assert not (tmp_path / "out").exists()
