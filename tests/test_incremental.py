"""Each image labelled once, ever: a scheduled run over a growing folder labels only what is
new or changed since any earlier date, a new model labels everything again, --plan says so
beforehand; provenance in every row; identical gs:// content read once."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.gcs_proxy import Gate
from tests.images import encode
from tests.runs import (
    cli,
    config_for,
    counter_values,
    output_files,
    read_rows,
    run_graph,
    signal_at_gate,
    storage_through_gate,
)
from transforms import metrics
from transforms.done import CHANGED, DONE, NEW, verdict
from transforms.models.catalog import model_version
from transforms.storage.listing import Listed, content_key

pytestmark = pytest.mark.slow  # the real command, the emulator


def photo(seed: int) -> bytes:
    """A small JPEG of its own content."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def write_photos(folder: pathlib.Path, seeds) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / f"p{seed:03d}.jpg").write_bytes(photo(seed))


def overwrite(path: pathlib.Path, seed: int) -> None:
    """New content under the same name; the modification time moves on even on a coarse
    clock (the version is size:mtime_ns)."""
    before = path.stat().st_mtime_ns
    path.write_bytes(photo(seed))
    os.utime(path, ns=(before + 10**9, before + 10**9))


def rows(out) -> list[dict]:
    return read_rows(str(out), "predictions") + read_rows(str(out), "errors")


def triples(out) -> list[tuple]:
    return sorted((r["uri"], r["source_version"], r["model_version"]) for r in rows(out))


# --- The rules, without Beam ---------------------------------------------------------------


def test_verdict_compares_source_and_model_versions():
    item = Listed("/a.jpg", 10, "10:5")
    assert verdict(item, [], "m1") == NEW
    assert verdict(item, [("10:5", "m1")], "m1") == DONE
    assert verdict(item, [("10:4", "m1")], "m1") == CHANGED  # the source changed
    assert verdict(item, [("10:4", "m1"), ("10:5", "m1")], "m1") == DONE
    assert verdict(item, [("10:5", "m0")], "m1") == NEW  # another model labelled it
    assert verdict(item, [(None, None)], "m1") == DONE  # a row from before versions
    assert verdict(Listed("/b.jpg"), [("", "m1")], "m1") == DONE  # no version either time


def test_identical_content_needs_a_listed_checksum():
    a = Listed("gs://b/a.jpg", 5, "1", "crc32c:AAAA")
    b = Listed("gs://b/b.jpg", 5, "7", "crc32c:AAAA")
    assert content_key(a) == content_key(b)
    assert content_key(Listed("/x.jpg", 5, "5:1")) != content_key(Listed("/y.jpg", 5, "5:1"))
    assert content_key(a) != content_key(Listed("gs://b/c.jpg", 6, "1", "crc32c:AAAA"))


def test_model_version_is_the_content_not_the_name(probe_model, failing_model, tmp_path):
    copy = tmp_path / "renamed"
    shutil.copytree(probe_model, copy)
    assert model_version(str(copy)) == model_version(probe_model)
    assert model_version(failing_model) != model_version(probe_model)
    shutil.copy(pathlib.Path(failing_model) / "saved_model.pb", copy / "saved_model.pb")
    assert model_version(str(copy)) != model_version(probe_model)


# --- Local disk, the real command ----------------------------------------------------------


def test_days_label_only_what_is_new_or_changed(tmp_path, probe_model, failing_model):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, range(30))

    def label(*extra: str, model: str = probe_model):
        args = [f"--input={photos}/*.jpg", f"--output={out}", f"--model={model}"]
        proc = cli(*args, "--image_size=32", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    label("--date=2026-11-01")
    day1 = triples(out)
    assert len(day1) == 30 and len({m for _, _, m in day1}) == 1
    assert all(v for _, v, _ in day1), "every row names its source version"

    write_photos(photos, range(30, 35))  # 5 new
    overwrite(photos / "p003.jpg", 103)  # 2 with other content
    overwrite(photos / "p004.jpg", 104)
    before = output_files(str(out), "predictions") + output_files(str(out), "errors")
    plan = label("--date=2026-11-02", "--plan", "--plan_sample=3")
    assert "to label: 7," in plan.stdout and "changed since labelled: 2" in plan.stdout
    assert "already labelled (same source and model version): 28" in plan.stdout
    assert output_files(str(out), "predictions") + output_files(str(out), "errors") == before
    assert not (out / "_temp").exists() or not any((out / "_temp").iterdir())

    day2 = label("--date=2026-11-02")
    assert "labelled 7 of 7 images" in day2.stderr
    assert "28 already in the output, 2 changed since labelled" in day2.stderr
    second = [r for r in rows(out) if r["date"] == "2026-11-02"]
    names = sorted(pathlib.Path(r["uri"]).name for r in second)
    assert names == ["p003.jpg", "p004.jpg", *(f"p{i:03d}.jpg" for i in range(30, 35))]
    # The old rows of the changed photos stay where they are; each version is there once.
    assert len(triples(out)) == len(set(triples(out))) == 37

    files = output_files(str(out), "predictions") + output_files(str(out), "errors")
    again = label("--date=2026-11-02")
    assert "labelled 0 of 0 images" in again.stderr
    assert output_files(str(out), "predictions") + output_files(str(out), "errors") == files

    label("--date=2026-11-03", model=failing_model)  # another model: everything again
    third = [r for r in rows(out) if r["date"] == "2026-11-03"]
    assert len(third) == 35 and {r["model_version"] for r in third} == {
        model_version(failing_model)
    }


OTHERWISE = (
    "4 already in the output (4 of them with another --top_k or --labels_file, kept as they "
    "are: a new --output or --skip_existing=false labels them with this run's)"
)


def test_other_top_k_or_labels_are_said_never_silent(tmp_path, probe_model, probe_labels):
    """Rows of --top_k 3 count as done for a run with --top_k 5 or other class names, and
    --plan and the summary say so, and how to relabel; the same settings say nothing."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, range(4))
    common = [f"--input={photos}/*.jpg", f"--output={out}", f"--model={probe_model}"]

    def label(*extra: str):
        proc = cli(*common, "--image_size=32", "--date=2026-11-01", "--quiet", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    label("--top_k=3")
    labelling = {r["labelling"] for r in read_rows(str(out), "predictions")}
    assert len(labelling) == 1 and next(iter(labelling)).startswith("top_k=3 labels=sha256:")
    files = output_files(str(out), "predictions")

    plan = label("--top_k=5", "--plan", "--plan_sample=1")
    assert (
        "plan: already labelled (same source and model version): 4, 4 of them with another "
        "--top_k or --labels_file, kept as they are" in plan.stdout
    ), plan.stdout
    one_job = label("--top_k=5", "--portion_seconds=0")  # the skip as Beam transforms
    assert OTHERWISE in one_job.stderr, one_job.stderr
    other_names = label("--top_k=3", f"--labels_file={probe_labels}")  # the run in portions
    assert OTHERWISE in other_names.stderr, other_names.stderr
    same = label("--top_k=3")
    assert "4 already in the output in " in same.stderr and "--top_k" not in same.stderr
    assert "--top_k" not in label("--top_k=3", "--plan", "--plan_sample=1").stdout
    assert output_files(str(out), "predictions") == files  # nothing changed, nothing silent


def test_skip_existing_date_looks_at_the_run_s_date_only(tmp_path, probe_model):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, range(4))
    common = [f"--input={photos}/*.jpg", f"--output={out}", f"--model={probe_model}"]
    for date in ("2026-11-01", "2026-11-01", "2026-11-02"):
        proc = cli(*common, "--image_size=32", "--skip_existing=date", f"--date={date}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(r["date"] for r in rows(out)) == ["2026-11-01"] * 4 + ["2026-11-02"] * 4


def test_a_partition_written_before_versions_counts_as_done(tmp_path, probe_model):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, range(6))
    old = out / "predictions" / "date=2025-01-01"
    old.mkdir(parents=True)
    labelled = sorted(str(p) for p in photos.glob("*.jpg"))[:4]
    table = pa.table(  # the columns rows had before they carried versions
        {
            "uri": labelled,
            "class_ids": [[0]] * 4,
            "labels": [["x"]] * 4,
            "scores": pa.array([[1.0]] * 4, pa.list_(pa.float32())),
            "model": ["old"] * 4,
        }
    )
    pq.write_table(table, old / "part-20250101T000000-abcdef-00000-of-00001.parquet")
    proc = cli(
        f"--input={photos}/*.jpg",
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=32",
        "--date=2026-11-01",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = sorted(r["uri"] for r in rows(out) if r["date"] == "2026-11-01")
    assert new == sorted(str(p) for p in photos.glob("*.jpg"))[4:]


def test_a_crashed_day_then_a_rerun_labels_each_version_once(gcs, bucket, tmp_path, probe_model):
    """Local photos, the output on gs://: day 2 is killed while it uploads its first
    predictions file (held there), then run again."""
    photos, out = tmp_path / "photos", f"gs://{bucket}/out"
    write_photos(photos, range(40))
    common = [f"--input={photos}/*.jpg", f"--output={out}", f"--model={probe_model}"]
    day1 = cli(*common, "--image_size=32", "--date=2026-11-01")
    assert day1.returncode == 0, day1.stderr[-3000:]
    write_photos(photos, range(40, 240))
    for seed in range(10):
        overwrite(photos / f"p{seed:03d}.jpg", 1000 + seed)

    day2 = [*common, "--image_size=32", "--date=2026-11-02", "--batch_size=4"]
    gate = Gate(1, "-predictions/", upload=True)
    with storage_through_gate(gcs.port, gate) as env:
        code, _ = signal_at_gate(day2, gate, signal.SIGKILL, env)
        assert code == -signal.SIGKILL
        proc = cli(*day2, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = triples(out)
    assert len(got) == len(set(got)) == 40 + 200 + 10
    current = {str(p) for p in photos.glob("*.jpg")}
    assert {u for u, _, _ in got} == current


# --- Cloud Storage (the emulator) ----------------------------------------------------------


def test_gcs_generations_identical_objects_and_model_weights(
    gcs, bucket, probe_model, failing_model, tmp_path
):
    from google.cloud import storage

    target = storage.Client().bucket(bucket)
    for i in range(3):
        target.blob(f"in/p{i}.jpg").upload_from_string(photo(i))
    target.blob("in/copy_of_p0.jpg").upload_from_string(photo(0))  # identical content
    for local in pathlib.Path(probe_model).rglob("*"):
        if local.is_file():
            name = f"model/{local.relative_to(probe_model)}"
            target.blob(name).upload_from_filename(str(local))
    out = f"gs://{bucket}/out"

    def label(date: str):
        config = config_for(
            f"--input=gs://{bucket}/in/*.jpg",
            f"--output={out}",
            f"--model=gs://{bucket}/model",
            "--image_size=32",
            f"--date={date}",
        )
        seen = len(gcs.requests())
        result, _, _ = run_graph(config)
        return counter_values(result), gcs.requests()[seen:], config

    counts, requests, config = label("2026-11-01")
    assert counts[metrics.IMAGES_LABELLED] == 4 and counts[metrics.IMAGES_IDENTICAL] == 1
    media = [r for r in requests if f"/download/storage/v1/b/{bucket}/o/in%2F" in r]
    assert len(media) == 3, media  # p0 and its copy: one read
    first = {r["uri"]: r for r in read_rows(out, "predictions")}
    p0, copy = first[f"gs://{bucket}/in/p0.jpg"], first[f"gs://{bucket}/in/copy_of_p0.jpg"]
    assert p0["labels"] == copy["labels"] and p0["scores"] == copy["scores"]
    blobs = {b.name: b for b in storage.Client().list_blobs(bucket, prefix="in/")}
    for uri, row in first.items():
        assert row["source_version"] == str(blobs[uri.split("/", 3)[3]].generation)
        assert row["model_version"] == config.model_version
        assert row["preprocess"].startswith("32x32 bilinear")

    target.blob("in/p1.jpg").upload_from_string(photo(11))  # a new generation
    counts, _, _ = label("2026-11-02")
    assert counts[metrics.IMAGES_LABELLED] == 1 and counts[metrics.IMAGES_CHANGED] == 1
    assert counts[metrics.IMAGES_SKIPPED] == 3

    for local in pathlib.Path(failing_model).rglob("*"):  # new weights under the same name
        if local.is_file():
            name = f"model/{local.relative_to(failing_model)}"
            target.blob(name).upload_from_filename(str(local))
    counts, _, config = label("2026-11-03")
    assert counts[metrics.IMAGES_LABELLED] == 4, "a model whose content changed labels all again"
    assert config.model_version == model_version(failing_model)
