"""Failures that can heal are tried again (README "Re-runs and resuming"), with the real
command: a file unreadable on day 1 is labelled on day 2 and its error row leaves; a corrupt
JPEG is never read again; a failure repeated --max_attempts times is final; a gs:// object
refused on day 1 is labelled on day 2, also when the run is killed while it rewrites the
error file, after which the same command leaves one current row per image."""

from __future__ import annotations

import pathlib
import signal

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from google.cloud import storage

from tests.gcs_proxy import Fault, Gate
from tests.runs import (
    cli,
    obeying_file_modes,
    output_files,
    read_rows,
    signal_at_gate,
    storage_through_gate,
)
from tests.test_incremental import photo

pytestmark = pytest.mark.slow  # the real command

DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")


def rows_by_uri(out: str, kind: str) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for row in read_rows(out, kind):
        found.setdefault(row["uri"], []).append(row)
    return found


def whole(out: str) -> None:
    """Every file of both kinds reads as Parquet (its footer is there)."""
    for kind in ("predictions", "errors"):
        for path in output_files(out, kind):
            with FileSystems.open(path) as f:
                pq.ParquetFile(f).metadata  # noqa: B018 - raises if it is not whole


def test_a_file_unreadable_on_day_1_is_labelled_on_day_2(tmp_path, probe_model, sample_jpeg):
    """Mode 000 (for a process without root's override of file modes): `locked` is opened
    again on day 2, `stuck` on day 2 and never after (--max_attempts 2), the corrupt JPEG
    never again (on day 2 it is also made unreadable: a read would be a 'no access' row)."""
    obeying_modes = obeying_file_modes()
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    for seed, name in enumerate(("good", "locked", "stuck")):
        (photos / f"{name}.jpg").write_bytes(photo(seed))
    (photos / "cut.jpg").write_bytes(sample_jpeg[: len(sample_jpeg) // 2])
    uri = {p.stem: str(p) for p in photos.glob("*.jpg")}
    args = [
        f"--input={photos}/*.jpg",
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=32",
        "--max_attempts=2",
        "--max_error_ratio=1",
    ]

    def label(day: int, *extra: str):
        proc = cli(*args, f"--date={DAYS[day - 1]}", *extra, prefix=obeying_modes)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    (photos / "locked.jpg").chmod(0)
    (photos / "stuck.jpg").chmod(0)
    try:
        label(1)
        errors = rows_by_uri(str(out), "errors")
        assert {u: [r["reason"] for r in rs] for u, rs in errors.items()} == {
            uri["locked"]: ["no access"],
            uri["stuck"]: ["no access"],
            uri["cut"]: ["corrupt image"],
        }

        before = output_files(str(out), "predictions") + output_files(str(out), "errors")
        plan = label(2, "--plan", "--plan_sample=1")
        assert "plan: failed before, tried again (a reason that may pass): 2\n" in plan.stdout
        assert "already labelled (same source and model version): 2" in plan.stdout
        assert output_files(str(out), "predictions") + output_files(str(out), "errors") == before

        (photos / "locked.jpg").chmod(0o644)  # fixed; the mode is not the version
        (photos / "cut.jpg").chmod(0)
        day2 = label(2)
        summary = day2.stderr.strip().splitlines()[-1]
        assert "labelled 1 of 2 images, 1 failed (read: 1 no access)" in summary, summary
        assert "2 already in the output, 2 failed before, tried again" in summary, summary

        predictions = rows_by_uri(str(out), "predictions")
        errors = rows_by_uri(str(out), "errors")
        assert sorted(predictions) == sorted([uri["good"], uri["locked"]])
        assert [r["date"] for r in predictions[uri["locked"]]] == [DAYS[1]]
        assert uri["locked"] not in errors, "the day-1 error row of a labelled image stays"
        assert sorted(r["date"] for r in errors[uri["stuck"]]) == list(DAYS[:2])
        assert [(r["reason"], r["date"]) for r in errors[uri["cut"]]] == [
            ("corrupt image", DAYS[0])
        ]
        whole(str(out))
        assert not any((out / "_temp").glob("*-supersede")), "staged files left behind"

        files = output_files(str(out), "predictions") + output_files(str(out), "errors")
        day3 = label(3)
        summary = day3.stderr.strip().splitlines()[-1]
        assert "labelled 0 of 0 images" in summary, summary
        assert "1 failure not tried again: 2 attempts made (--max_attempts)" in summary, summary
        assert output_files(str(out), "predictions") + output_files(str(out), "errors") == files
    finally:
        for path in photos.glob("*.jpg"):
            path.chmod(0o644)


def test_a_refused_gs_object_is_labelled_on_day_2_also_across_a_crash_in_the_rewrite(
    gcs, bucket, probe_model, sample_jpeg
):
    """Day 1: one object answers 403 (a Fault at the proxy), one is a corrupt JPEG, both in
    one error file. Day 2 (one job: the Beam join) labels the refused one, commits, and is
    killed while it uploads the error file rewritten without that row to _temp/ (a Gate
    holds the upload; released after the kill, a held copy onto the file's name would still
    land, so the upload is where the rewrite can be cut short): the files are whole, the old
    row still there. The same command then removes it and labels nothing: one current row
    per image."""
    target = storage.Client().bucket(bucket)
    cut = sample_jpeg[: len(sample_jpeg) // 2]
    for name, data in (("p0", photo(0)), ("p1", photo(1)), ("cut", cut)):
        target.blob(f"in/{name}.jpg").upload_from_string(data)
    uri = {name: f"gs://{bucket}/in/{name}.jpg" for name in ("p0", "p1", "cut")}
    out = f"gs://{bucket}/out"
    args = [
        f"--input=gs://{bucket}/in/*.jpg",
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=32",
        "--max_error_ratio=1",
        "--portion_seconds=0",
    ]
    refused = Fault("in/p1.jpg", 403, n=1)
    gate = Gate(1, "-supersede/", upload=True)  # the staged copy of a rewritten file
    with storage_through_gate(gcs.port, gate, faults=[refused]) as env:
        day1 = cli(*args, f"--date={DAYS[0]}", env=env)
        assert day1.returncode == 0, day1.stderr[-3000:]
        errors = rows_by_uri(out, "errors")
        assert {u: [r["reason"] for r in rs] for u, rs in errors.items()} == {
            uri["p1"]: ["no access"],
            uri["cut"]: ["corrupt image"],
        }
        (error_file,) = output_files(out, "errors")

        day2 = [*args, f"--date={DAYS[1]}"]
        code, _ = signal_at_gate(day2, gate, signal.SIGKILL, env)
        assert code == -signal.SIGKILL
        whole(out)
        assert uri["p1"] in rows_by_uri(out, "predictions"), "day 2 had committed"
        assert uri["p1"] in rows_by_uri(out, "errors"), "the rewrite was cut short"

        again = cli(*day2, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "labelled 0 of 0 images" in again.stderr.strip().splitlines()[-1]
        predictions, errors = rows_by_uri(out, "predictions"), rows_by_uri(out, "errors")
        whole(out)
        error_files = output_files(out, "errors")
    assert (refused.answered, refused.downloads) == (1, 2)
    assert {u: [r["date"] for r in rs] for u, rs in predictions.items()} == {
        uri["p0"]: [DAYS[0]],
        uri["p1"]: [DAYS[1]],
    }
    assert {u: [r["reason"] for r in rs] for u, rs in errors.items()} == {
        uri["cut"]: ["corrupt image"]
    }
    assert error_files == [error_file], "rewritten in place, under its name"
    assert pathlib.PurePosixPath(error_file).parent.name == f"date={DAYS[0]}"
