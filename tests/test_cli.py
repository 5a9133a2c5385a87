"""The real command line, run as a user runs it: layout and schema on disk, summary, errors."""

import pathlib
import re
import subprocess
import sys

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.options import FLAGS, parse_options
from tests.runs import cli
from transforms.rows import ERROR_SCHEMA, PREDICTION_SCHEMA

pytestmark = pytest.mark.slow  # every test here runs the real command


def declared_flags() -> list[str]:
    """Every flag the job declares (pipeline/options.py FLAGS)."""
    return [f"--{flag.name}" for flag in FLAGS]


def test_help_lists_every_flag_and_hides_beams():
    flags = declared_flags()
    assert len(flags) >= 17 and "--labels_file" in flags
    out = cli("--help").stdout
    listed = set(re.findall(r"^  (--\w+)", out, re.MULTILINE))
    assert listed == set(flags)


def test_the_command_line_reaches_beam_as_beam_would_parse_it(tmp_path):
    """Parsed once, by our parser, and handed to Beam as values: every option as Beam's own
    parse of the same flags gives it, ours and Beam's (lists, negated flags) alike."""
    argv = [
        *("--input=a", "--input", "b", f"--output={tmp_path}", "--plan", "--skip_existing=date"),
        *("--max_object_mb=2.5", "--runner=DirectRunner", "--direct_num_workers=2"),
        *("--project=p", "--labels=team=vision", "--labels", "x=y", "--experiments=e"),
        "--no_use_public_ips",
    ]
    ours = parse_options(argv, "label-images")
    assert ours.get_all_options() == PipelineOptions(argv).get_all_options()
    assert ours.get_all_options(drop_default=True)["labels"] == ["team=vision", "x=y"]


def test_unknown_flag_is_one_line_naming_the_closest(tmp_path):
    proc = cli("--input=x", f"--output={tmp_path}", "--topk", "3", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "python -m pipeline.run: error: unknown flag --topk; did you mean --top_k? (see --help)"
    ]


def test_cli_labels_a_folder_into_hive_partitioned_parquet(image_dir, probe_model, tmp_path):
    out = tmp_path / "out"
    proc = cli(
        f"--input={image_dir['root']}/**",
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=64",
        "--max_error_ratio=0.2",  # 5 bad files of 35
        "--batch_size=8",
        "--date=2025-01-31",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_good = len(image_dir["good"]) + len(image_dir["patches"])
    n_bad = len(image_dir["bad"])
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"labelled {n_good} of {n_good + n_bad} images, {n_bad} failed")
    assert f"{out}/predictions/date=2025-01-31" in summary

    for kind, schema, rows in [
        ("predictions", PREDICTION_SCHEMA, n_good),
        ("errors", ERROR_SCHEMA, n_bad),
    ]:
        partition = out / kind / "date=2025-01-31"
        leftovers = [p for p in partition.iterdir() if not p.name.endswith(".parquet")]
        assert leftovers == [], "temporary files were left behind"
        files = sorted(partition.glob("part-*.parquet"))
        assert files, f"no {kind} file landed"
        assert pq.read_schema(files[0]).remove_metadata() == schema
        table = ds.dataset(out / kind, partitioning="hive").to_table()
        assert table.num_rows == rows
        assert table.column("date").unique().to_pylist() == ["2025-01-31"]
    assert not [p for p in (out / "_temp").rglob("*") if p.is_file()], "temporary files left"


BAD_OPTIONS = [
    (["--top_k=0"], "--top_k must be between 1 and 1000"),
    (["--top_k=1001"], "--top_k must be between 1 and 1000"),
    (["--image_size=0"], "--image_size must be between 1 and 1024 pixels, not 0"),
    (["--image_size=100000"], "--image_size must be between 1 and 1024 pixels, not 100000"),
    (["--read_concurrency=0"], "--read_concurrency must be between 1 and 512"),
    (["--max_object_mb=0"], "--max_object_mb must be between 0.001 and 4096"),
    (["--max_error_ratio=1.5"], "--max_error_ratio must be between 0 and 1"),
    (["--top_k=three"], "argument --top_k: invalid int value: 'three'"),
    (["--batch_size=-1"], "--batch_size must be between 1 and 1024"),
    (["--labels_file=/nonexistent/x.txt"], "--labels_file /nonexistent/x.txt cannot be read"),
    (["--date=yesterday"], "--date yesterday is not a date"),
    # A value holding control characters: escaped, so the error stays one line.
    (["--date=2026-01-01\n\x1b[31m"], "--date 2026-01-01\\n\\x1b[31m is not a date"),
    (["--top_\x1b[31mk=3"], "unknown flag --top_\\x1b[31mk=3"),
    (["--input=/nonexistent/*.jpg"], "the folder /nonexistent does not exist"),
    # A misspelt folder: it does not exist, and the closest one that does is named.
    (
        ["--input=TMP/photoz/*.jpg"],
        "--input TMP/photoz/*.jpg: the folder TMP/photoz does not exist; the closest folder "
        "that does is TMP",
    ),
    (["--input=TMP/gone.jpg"], "--input TMP/gone.jpg does not exist; the closest folder"),
    # An unquoted glob the shell expanded: a second file name follows --input.
    (
        ["--input", "TMP/a.jpg", "TMP/b.jpg", "TMP/c.jpg"],
        "unexpected argument TMP/b.jpg (and 1 more) after --input, most likely a file name "
        "the shell made of an unquoted pattern: quote the pattern",
    ),
    (["--model=/nonexistent/model"], "--model /nonexistent/model does not exist"),
    (["--model=MODEL_NOT_SAVEDMODEL"], "is not a SavedModel directory"),
    (["--model=https://127.0.0.1:9/efficientnet/b3"], "pass --model /path/to/saved_model_dir"),
    (["--input_manifest=MANIFEST_NO_URI"], "has no 'uri' column"),
    (["--output="], "--output is required"),
    (["--labels_file=TEN_LABELS"], "has 1000 outputs but the labels file has 10 names"),
    # The cause (the labels file against the model) before the symptom (--top_k 5 > 3).
    (["--labels_file=THREE_LABELS"], "has 1000 outputs but the labels file has 3 names"),
    (["--progress_interval=0"], "--progress_interval must be between 0.1 and 86400"),
    (["--skip_existing=maybe"], "expected true, date or false, not 'maybe'"),
    (["--output=A_FILE/out"], "A_FILE is a file, where the output needs a folder"),
]


@pytest.mark.parametrize("extra,message", BAD_OPTIONS)
def test_bad_options_stop_before_any_work(extra, message, image_dir, probe_model, tmp_path):
    no_uri = tmp_path / "manifest.csv"
    no_uri.write_text("path\n/a.jpg\n")
    ten = tmp_path / "ten.txt"
    ten.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    three = tmp_path / "three.txt"
    three.write_text("cat\ndog\nbird\n")
    placeholders = {
        "MODEL_NOT_SAVEDMODEL": tmp_path,
        "MANIFEST_NO_URI": no_uri,
        "TEN_LABELS": ten,
        "THREE_LABELS": three,
        "A_FILE": ten,  # a file where a folder should be
        "TMP": tmp_path,
    }
    for name, value in placeholders.items():
        extra = [e.replace(name, str(value)) for e in extra]
        message = message.replace(name, str(value))
    out = tmp_path / "out"
    args = [f"--input={image_dir['root']}/*.png", f"--output={out}", f"--model={probe_model}"]
    proc = cli(*args, *extra, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    # One line, ours, saying what is wrong: no TensorFlow start-up noise, no traceback.
    (line,) = proc.stderr.splitlines()
    assert line.startswith("python -m pipeline.run: error: ") and message in line, line
    assert not out.exists()


def test_label_images_console_script_is_the_same_command(image_dir, probe_model, tmp_path):
    command = pathlib.Path(sys.executable).parent / "label-images"
    helped = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: label-images ")
    out = tmp_path / "out"
    args = [f"--input={image_dir['root']}/patch_*.png", f"--output={out}", f"--model={probe_model}"]
    proc = subprocess.run(
        [command, *args, "--image_size=32"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(image_dir["patches"])
    assert proc.stderr.strip().splitlines()[-1].startswith(f"labelled {n} of {n} images")
    assert ds.dataset(out / "predictions", partitioning="hive").to_table().num_rows == n
    bad = subprocess.run([command, *args, "--top_k=0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("label-images: error: --top_k")


def test_require_gpu_fails_the_job_instead_of_labelling_on_cpu(image_dir, probe_model, tmp_path):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("needs a machine without a GPU (CI has none): here TensorFlow sees one")
    out = tmp_path / "out"
    proc = cli(
        f"--input={image_dir['root']}/patch_*.png",
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=32",
        "--require_gpu",
    )
    assert proc.returncode != 0
    assert "--require_gpu is set but TensorFlow sees no GPU" in proc.stderr
    assert not (out / "predictions").exists()
