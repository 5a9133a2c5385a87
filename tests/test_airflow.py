"""The Airflow DAG (dags/image_labeler.py) run by Airflow itself: Airflow 3.3.2 from
requirements-airflow.txt in its own virtualenv (.venv-airflow, scripts/setup_airflow.sh), its
metadata database on SQLite, each day an `airflow dags test` of the DAG on real files with the
grid-probe model: a run, days over a folder that gains photos, a run killed part-way and
retried, a day with too many failures, and a run on the local Flink cluster; the Dataflow and
Flink tasks rendered against docs/dataflow.md and docs/flink.md.

One Airflow process serves the whole file (Airflow's start-up, some seconds, is paid once): it
runs Airflow's own CLI commands, in-process, as the test asks (DRIVER below)."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import pathlib
import re
import select
import shlex
import shutil
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from tests.flink_cluster import in_ci, process_tree
from tests.images import SAMPLES, SAMPLES_DIR, bad_files, encode, patch_image, quadrants
from tests.runs import output_files, read_rows

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-airflow"
REQUIREMENTS = ROOT / "requirements-airflow.txt"

# Runs in .venv-airflow: reads one request a line on stdin ({"argv": [...], "settings": {...},
# "capture": bool}), runs `airflow ARGV` in this process with the settings as the DAG's Variable
# (AIRFLOW_VAR_IMAGE_LABELER, read when the DAG file is parsed: each command parses it anew),
# and answers one JSON line on the file descriptor argv[1] names: the command's status, its
# stdout if captured, and after `dags test` the run's state and each task's state and try.
DRIVER = """
import contextlib, io, json, os, sys, traceback

answers = os.fdopen(int(sys.argv[1]), "w", buffering=1)
from airflow.cli import cli_parser

for line in sys.stdin:
    request = json.loads(line)
    os.environ["AIRFLOW_VAR_IMAGE_LABELER"] = json.dumps(request.get("settings") or {})
    argv, out, status = request["argv"], io.StringIO(), 0
    capture = contextlib.redirect_stdout(out) if request["capture"] else contextlib.nullcontext()
    try:
        args = cli_parser.get_parser().parse_args(argv)
        with capture:
            args.func(args)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
        print(f"airflow {' '.join(argv)}: {e.code}", flush=True)
    except Exception:
        traceback.print_exc()
        status = 1
    answer = {"status": status, "stdout": out.getvalue()}
    if argv[:2] == ["dags", "test"]:
        import pendulum
        from airflow.models import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            run = session.scalars(select(DagRun).where(
                DagRun.dag_id == argv[2], DagRun.logical_date == pendulum.parse(argv[3])
            )).one_or_none()
            if run is not None:
                answer["state"] = str(run.state)
                answer["tasks"] = {
                    ti.task_id: {"state": str(ti.state), "try": ti.try_number}
                    for ti in run.task_instances
                }
    answers.write(json.dumps(answer) + "\\n")
"""


class Airflow:
    """The driver process and its log (everything Airflow and the tasks print)."""

    def __init__(self, home: pathlib.Path):
        self.home = home
        self.log_path = home / "airflow.log"
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
        )
        # .venv-airflow is installed without bytecode: Python writes it for what Airflow
        # imports, once (PYTHONDONTWRITEBYTECODE, set on this project's VMs, would forbid it).
        read, write = os.pipe()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(VENV / "bin" / "python"), "-c", DRIVER, str(write)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write,),
                cwd=home,
                env=env,
                text=True,
                start_new_session=True,  # its group: the labellers it starts, too
            )
        os.close(write)
        self.answers = os.fdopen(read)
        self.offset = 0

    def send(self, argv: list[str], settings: dict | None = None, capture: bool = False):
        self.offset = self.log_path.stat().st_size
        request = {"argv": argv, "settings": settings, "capture": capture}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 300) -> dict:
        """The answer to the request sent, with "log": what was printed meanwhile."""
        ready, _, _ = select.select([self.answers], [], [], timeout)
        if not ready:
            self.close()
            pytest.fail(f"airflow gave no answer in {timeout} s:\n{self.log()[-5000:]}")
        line = self.answers.readline()
        assert line, f"the airflow process ended:\n{self.log()[-5000:]}"
        return {**json.loads(line), "log": self.log()}

    def run(self, argv: list[str], settings: dict | None = None, **kwargs) -> dict:
        self.send(argv, settings, kwargs.pop("capture", False))
        return self.answer(**kwargs)

    def dags_test(self, date: str, settings: dict, **kwargs) -> dict:
        return self.run(["dags", "test", "image_labeler", date], settings, **kwargs)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            f.seek(self.offset)
            return f.read()

    def close(self) -> None:
        """Ends it and whatever it started (its metadata database has nothing to flush)."""
        self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.answers.close()


def installed() -> bool:
    """.venv-airflow is there, built from the requirements file as it is now."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return (VENV / f".installed-{digest}").is_file()


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    if not installed():
        why = f"{VENV.name} is missing or older than {REQUIREMENTS.name}: scripts/setup_airflow.sh"
        if in_ci():
            pytest.fail(f"CI must run the Airflow tests, but {why}", pytrace=False)
        pytest.skip(f"the Airflow tests need Airflow's own venv; {why} builds it")
    driver = Airflow(tmp_path_factory.mktemp("airflow"))
    try:
        migrated = driver.run(["db", "migrate"], timeout=120)
        assert migrated["status"] == 0, migrated["log"][-3000:]
        yield driver
    finally:
        driver.close()


def settings_for(images: str, out, model: str, **more) -> dict:
    """The Variable for DirectRunner runs: retried at once (retry_delay 0)."""
    return {
        "input": images,
        "output": str(out),
        "model": model,
        "options": {"image_size": 32, "quiet": True},
        "retries": 2,
        "retry_delay_seconds": 0,
        **more,
    }


def days_of(out) -> dict[str, str]:
    """{uri: date} of every row, predictions and errors; a URI twice fails."""
    rows = read_rows(str(out), "predictions") + read_rows(str(out), "errors")
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)), "a URI was written twice"
    return {r["uri"]: r["date"] for r in rows}


def committed(out) -> int:
    """Prediction rows in the partitions' finished files, from their footers."""
    total = 0
    for path in output_files(str(out), "predictions"):
        with FileSystems.open(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def rendered(output: str) -> dict[str, str]:
    """`airflow tasks render`'s output: {field: its rendered text}."""
    parts = re.split(r"^# -+\n# property: (\w+)\n# -+\n", output, flags=re.M)
    return {name: text.strip() for name, text in zip(parts[1::2], parts[2::2], strict=True)}


def documented(doc: str, start: str) -> list[list[str]]:
    """The words of each command in docs/DOC's indented code blocks that starts with
    `start`, its continued lines joined."""
    text = (ROOT / "docs" / doc).read_text().replace("\\\n", " ")
    return [
        shlex.split(line)
        for line in text.splitlines()
        if line.startswith("    ") and line.strip().startswith(start)
    ]


def test_the_dataflow_and_flink_tasks_render_the_documented_commands(airflow):
    """The Dataflow task launches the Flex Template with docs/dataflow.md's `gcloud dataflow
    flex-template run` parameters and pipeline options for the day; the Flink task runs
    docs/flink.md's run_flink.sh command for a cluster, with the day's --date. Settings are
    taken from the documented commands; the rendering is Airflow's."""
    date = "2026-01-01"
    (run,) = documented("dataflow.md", "gcloud dataflow flex-template run")
    words = [
        w.replace("$(date +%F)", date).replace("$(date +%Y%m%d)", date.replace("-", ""))
        for w in run
    ]
    flags: dict[str, list[str]] = {}
    for name, value in zip(words[5::2], words[6::2], strict=True):
        flags.setdefault(name, []).append(value)
    parameters = dict(p.split("=", 1) for group in flags["--parameters"] for p in group.split(","))
    pipeline_options = flags["--additional-pipeline-options"]
    image = next(o.split("=", 1)[1] for o in pipeline_options if o.startswith("sdk_container"))
    settings = {
        "runner": "DataflowRunner",
        **{k: v for k, v in parameters.items() if k in ("input", "output", "model")},
        "dataflow": {
            "project": "MY_PROJECT",
            "region": flags["--region"][0],
            "template": flags["--template-file-gcs-location"][0],
            "image": image,
        },
    }
    assert airflow.run(["dags", "reserialize"], settings)["status"] == 0
    answer = airflow.run(
        ["tasks", "render", "image_labeler", "label", date], settings, capture=True
    )
    assert answer["status"] == 0, answer["log"][-3000:]
    fields = rendered(answer["stdout"])
    launch = ast.literal_eval(fields["body"])["launchParameter"]
    assert launch["parameters"] == parameters
    assert launch["environment"] == {"additionalPipelineOptions": pipeline_options}
    assert launch["jobName"] == words[4]
    assert launch["containerSpecGcsPath"] == settings["dataflow"]["template"]
    assert fields["location"] == settings["dataflow"]["region"]

    commands = {
        tuple(c) for c in documented("flink.md", "./run_flink.sh --flink_master jobmanager")
    }
    assert commands, "docs/flink.md shows no run_flink.sh command for a cluster"
    for command in commands:
        flags = flag_values(command[1:])
        runs = {k: v for k, v in flags.items() if k in ("input", "output", "model")}
        settings = {
            "runner": "FlinkRunner",
            **runs,
            "flink": {k: v for k, v in flags.items() if k not in runs},
        }
        answer = airflow.run(
            ["tasks", "render", "image_labeler", "label", date], settings, capture=True
        )
        assert answer["status"] == 0, answer["log"][-3000:]
        words = shlex.split(rendered(answer["stdout"])["bash_command"])
        assert words[0] == str(ROOT / "run_flink.sh")
        assert flag_values(words[1:]) == {**flags, "date": date}

    # The DAG's Flex Template parameters are flex_template/metadata.json's.
    metadata = json.loads((ROOT / "flex_template" / "metadata.json").read_text())
    tree = ast.parse((ROOT / "dags" / "image_labeler.py").read_text())
    (names,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "FLEX_PARAMETERS"
    ]
    assert set(names) == {p["name"] for p in metadata["parameters"]}


def flag_values(words) -> dict:
    """--name value pairs, and a bare --flag as True."""
    flags, words = {}, list(words)
    while words:
        name = words.pop(0).removeprefix("--")
        flags[name] = words.pop(0) if words and not words[0].startswith("--") else True
    return flags


def test_days_label_each_photo_once_into_the_day_it_arrived(airflow, probe_model, tmp_path):
    """Three days over a folder that gains photos each day, a DAG run for each in order: the
    first labels the six samples into date=2026-01-01, and each photo is labelled once, into
    the partition of the day it arrived."""
    folder, out = tmp_path / "incoming", tmp_path / "out"
    folder.mkdir()
    settings = settings_for(f"{folder}/*", out, probe_model)
    arrived = {}
    for day, new in [
        (
            "2026-01-01",
            {f"{name}.jpg": (SAMPLES_DIR / f"{name}.jpg").read_bytes() for name in SAMPLES},
        ),
        ("2026-01-02", {f"patch_{i}.png": patch_png(i) for i in range(4)}),
        ("2026-01-03", {f"crop_{name}.jpg": crop(name) for name in SAMPLES[:3]}),
    ]:
        for name, data in new.items():
            (folder / name).write_bytes(data)
            arrived[str(folder / name)] = day
        answer = airflow.dags_test(day, settings)
        assert answer["status"] == 0, answer["log"][-5000:]
        assert answer["state"] == "success"
        assert answer["tasks"]["label"] == {"state": "success", "try": 1}
        if day == "2026-01-01":  # one DAG run labels the samples into date=2026-01-01
            rows = read_rows(str(out), "predictions")
            assert sorted(r["uri"] for r in rows) == sorted(arrived)
            assert {r["date"] for r in rows} == {day}
            assert all(len(r["labels"]) == 5 for r in rows)
            assert not output_files(str(out), "errors")
    assert days_of(out) == arrived


def patch_png(i: int) -> bytes:
    return encode(Image.fromarray(patch_image(64, i % 4, (i * 3) % 4, i % 3)), "PNG")


def crop(name: str) -> bytes:
    return encode(Image.open(SAMPLES_DIR / f"{name}.jpg").crop((0, 0, 200, 150)), "JPEG")


def test_a_run_killed_part_way_is_retried_and_labels_every_image_once(
    airflow, probe_model, tmp_path
):
    """SIGKILL to the labeller (its process group) once its first portion (64 images) is
    committed, the second (the rest) in flight: Airflow retries the task (try 2), which labels
    what was not committed; every URI is in the output once."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    folder.mkdir()
    first = folder / "p0000.jpg"
    first.write_bytes(encode(Image.fromarray(quadrants()), "JPEG", quality=90))
    photos = 400
    for i in range(1, photos):  # hard links to one small JPEG: as cheap as images come
        (folder / f"p{i:04d}.jpg").hardlink_to(first)
    settings = settings_for(f"{folder}/*.jpg", out, probe_model, depends_on_past=False)
    airflow.send(["dags", "test", "image_labeler", "2026-01-04"], settings)
    deadline = time.monotonic() + 300
    while not committed(out):
        assert airflow.proc.poll() is None and time.monotonic() < deadline, airflow.log()[-5000:]
        time.sleep(0.05)
    labellers = [pid for pid in process_tree([airflow.proc.pid]) if b"pipeline.run" in cmdline(pid)]
    assert labellers, "no labeller process"
    for pid in labellers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    kept = committed(out)
    answer = airflow.answer()
    assert 0 < kept < photos, f"{kept} rows committed when the run was killed"
    assert answer["status"] == 0, answer["log"][-5000:]
    assert answer["tasks"]["label"] == {"state": "success", "try": 2}
    assert "the labeller was killed by signal 9; retried" in answer["log"]
    rest = photos - kept
    assert f"labelled {rest:,} of {rest:,} images" in answer["log"]
    assert f"{kept:,} already in the output" in answer["log"]
    assert sorted(days_of(out)) == sorted(str(p) for p in folder.iterdir())


def cmdline(pid: int) -> bytes:
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_run_on_the_flink_cluster_labels_the_samples(airflow, cluster, probe_model, tmp_path):
    """runner FlinkRunner: the task runs run_flink.sh against the local cluster's REST address,
    which runs the job; the samples are labelled into the day's partition."""
    out = tmp_path / "out"
    settings = settings_for(f"{SAMPLES_DIR}/*.jpg", out, probe_model, depends_on_past=False)
    settings |= {
        "runner": "FlinkRunner",
        "flink": {
            "flink_master": cluster.master,
            "worker_command": cluster.worker_command,
            "parallelism": 1,  # one SDK worker to start (TensorFlow's import) on 2 cores
        },
    }
    answer = airflow.dags_test("2026-01-05", settings, timeout=600)
    assert answer["status"] == 0, answer["log"][-5000:] + cluster.logs()
    assert answer["tasks"]["label"] == {"state": "success", "try": 1}
    (job,) = cluster.jobs()
    assert job["state"] == "FINISHED"
    samples = {str(SAMPLES_DIR / f"{name}.jpg") for name in SAMPLES}
    assert days_of(out) == dict.fromkeys(samples, "2026-01-05")
    assert {r["uri"] for r in read_rows(str(out), "predictions")} == samples


def test_a_day_with_too_many_failures_fails_and_is_not_retried(airflow, probe_model, tmp_path):
    """Five bad files among the six samples, more than --max_error_ratio 0.05: the labeller
    writes every row and exits 3; the task fails at its first try, retries left unused, and
    its log says why."""
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    for name in SAMPLES:
        shutil.copy(SAMPLES_DIR / f"{name}.jpg", folder)
    for name, data in bad_files((SAMPLES_DIR / "cat.jpg").read_bytes()).items():
        (folder / name).write_bytes(data)
    settings = settings_for(f"{folder}/*", out, probe_model, depends_on_past=False)
    answer = airflow.dags_test("2026-01-06", settings)
    assert answer["status"] != 0
    assert answer["state"] == "failed"
    assert answer["tasks"]["label"] == {"state": "failed", "try": 1}
    assert "exit status 3: more than --max_error_ratio of the day's images failed" in answer["log"]
    assert answer["log"].count("labelled 6 of 11 images, 5 failed") == 1  # run once
    assert days_of(out) == dict.fromkeys(map(str, folder.iterdir()), "2026-01-06")
