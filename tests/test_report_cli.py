"""The report command's edges: --sample bounds (exit 2, one line) and values too long for a
terminal shortened, terminal escapes never printed."""

from __future__ import annotations

import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report.cli import shorten
from tests.runs import report_cli
from tests.test_hostile_inputs import DATE
from transforms.rows import ERROR_SCHEMA, error_row


def test_long_values_are_shortened_for_a_terminal():
    assert shorten("short", 10) == "short"
    long = "/a/" + "x" * 1000 + "/end.jpg"
    shown = shorten(long, 60)
    assert len(shown) == 60 and shown.startswith("/a/x") and shown.endswith("end.jpg")


# --- Runs of the CLI -----------------------------------------------------------------------


def write_errors(root: pathlib.Path, uris: list[str]) -> None:
    folder = root / "errors" / f"date={DATE}"
    folder.mkdir(parents=True)
    rows = [error_row(u, "read", "not found", "gone") for u in uris]
    pq.write_table(pa.Table.from_pylist(rows, schema=ERROR_SCHEMA), folder / "part-x.parquet")


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("sample", ["-1", "0", "1001"])
def test_report_sample_must_be_positive_and_bounded(sample, tmp_path):
    write_errors(tmp_path / "out", ["/x/a.jpg"])
    proc = report_cli(str(tmp_path / "out"), f"--sample={sample}", f"--out={tmp_path}/r")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "--sample must be between 1 and" in lines[0], proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # runs the real command
def test_report_shortens_long_values_in_the_terminal(tmp_path):
    long = "/x/" + "é" * 20000 + "\x1b[2J.jpg"
    write_errors(tmp_path / "out", [long])
    proc = report_cli(str(tmp_path / "out"), f"--out={tmp_path}/r")
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 160
    assert "\x1b" not in proc.stdout and "…" in proc.stdout
