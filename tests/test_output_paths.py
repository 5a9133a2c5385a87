"""Where --output may be: names with glob characters work; an output inside another
output's predictions/, errors/ or _temp/ is refused, whichever was made first; anything in
the way of a folder or file the run writes is found at start-up, before any work."""

from __future__ import annotations

import pathlib

import pytest

from pipeline.config import enclosing_output, nested_output
from tests.odd_files import jpeg, label
from tests.test_hostile_inputs import DATE, labelled_once, start_up_error
from transforms.storage.uris import glob_escape


def test_an_output_inside_another_outputs_folders_is_found(tmp_path):
    other = tmp_path / "other"
    (other / "predictions" / f"date={DATE}").mkdir(parents=True)
    (other / "predictions" / f"date={DATE}" / "part-x.parquet").write_bytes(b"")
    (other / "_temp").mkdir()
    for inside in [
        other / "predictions" / "x",
        other / "predictions" / f"date={DATE}" / "x",
        other / "errors" / "x",
        other / "_temp" / "run" / "x",
    ]:
        assert enclosing_output(str(inside)) == str(other), inside
    for fine in [other, other / "more", tmp_path / "predictions" / "x", tmp_path / "x"]:
        assert enclosing_output(str(fine)) is None, fine


def test_an_output_inside_this_ones_folders_is_found(tmp_path):
    root = tmp_path / "root"
    (root / "predictions" / f"date={DATE}").mkdir(parents=True)
    (root / "predictions" / f"date={DATE}" / "part-x.parquet").write_bytes(b"")  # its own
    assert nested_output(str(root)) is None
    for inside in ["predictions/x", f"errors/date={DATE}/x", "_temp/run/x"]:
        part = root / inside / "errors" / f"date={DATE}" / "part-y.parquet"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"")
        assert nested_output(str(root)) == str(root / inside), inside
        part.unlink()
    assert nested_output(str(root)) is None


@pytest.mark.slow  # the GCS emulator
def test_outputs_inside_each_other_are_found_on_gcs(bucket):
    from google.cloud import storage

    blobs = storage.Client().bucket(bucket)
    root = f"gs://{bucket}/root"
    blobs.blob(f"root/predictions/date={DATE}/part-a.parquet").upload_from_string(b"")
    assert (nested_output(root), enclosing_output(f"{root}/other")) == (None, None)
    blobs.blob(f"root/_temp/x/predictions/date={DATE}/part-b.parquet").upload_from_string(b"")
    assert nested_output(root) == f"{root}/_temp/x"
    assert enclosing_output(f"{root}/errors/y") == root


# --- Runs of the CLI -----------------------------------------------------------------------


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("name", ["o[1]", "o[!x]*?", "o]"])
def test_an_output_with_glob_characters_works(name, tmp_path, sample_jpeg, probe_model):
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(3)]
    out = tmp_path / name
    (tmp_path / "o1").mkdir()  # what '[1]' would match as a class
    for _ in range(2):  # the second run finds all three done
        proc = label([f"--input={tmp_path}/img/*"], out, probe_model)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # (the helper lists ROOT/<kind>/** with Beam's glob: ROOT's own '[' escaped)
        assert labelled_once(pathlib.Path(glob_escape(str(out)))) == (sorted(paths), [])
    assert "3 already in the output" in proc.stderr
    assert not any((out / "_temp").iterdir()) if (out / "_temp").exists() else True
    assert list((tmp_path / "o1").iterdir()) == []


@pytest.mark.slow  # runs the real command
def test_an_output_inside_another_output_is_refused(tmp_path, sample_jpeg, probe_model):
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(2)]
    first = tmp_path / "first"
    proc = label([f"--input={tmp_path}/img/*"], first, probe_model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for inside in ["predictions/x", f"errors/date={DATE}/x", "_temp/x"]:
        out = first / inside
        line = start_up_error(label([f"--input={tmp_path}/img/*"], out, probe_model))
        assert f"--output {out} is inside the output {first}" in line
    assert labelled_once(first) == (sorted(paths), [])


@pytest.mark.slow  # runs the real command
def test_an_output_made_inside_a_folder_that_later_becomes_an_output_is_refused(
    tmp_path, sample_jpeg, probe_model
):
    """The other order: the inner output first, then a run on the folder around it."""
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(2)]
    outer = tmp_path / "outer"
    inner = outer / "predictions" / "x"
    proc = label([f"--input={tmp_path}/img/*"], inner, probe_model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = start_up_error(label([f"--input={tmp_path}/img/*"], outer, probe_model))
    assert f"--output {outer} holds another output, {inner}, whose files" in line
    assert labelled_once(inner) == (sorted(paths), [])
    assert sorted(p.name for p in outer.iterdir()) == ["predictions"]


def tree(top: pathlib.Path) -> list[tuple[str, bool]]:
    """Every path under `top` and whether it is a folder (links not followed)."""
    return sorted((str(p), p.is_dir() and not p.is_symlink()) for p in top.rglob("*"))


# (what is in the way, relative to --output "out"; what it is, where the run writes what)
LAYOUT_FAULTS = [
    ("", "a file", "the run writes a folder"),  # --output itself
    ("..", "a file", "the output needs a folder"),  # --output is out/sub, out a file
    ("predictions", "a file", "the run writes a folder"),
    (f"predictions/date={DATE}", "a file", "the run writes a folder"),
    ("errors", "a dangling link", "the run writes a folder"),
    (f"errors/date={DATE}", "a file", "the run writes a folder"),
    ("_temp", "a file", "the run writes a folder"),
    ("_temp/lease-all-dates", "a folder", "the run writes a file"),
]


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("where,what,needed", LAYOUT_FAULTS)
def test_anything_in_the_way_of_the_output_is_found_at_start_up(
    where, what, needed, tmp_path, sample_jpeg, probe_model
):
    jpeg(tmp_path / "img" / "a.jpg", sample_jpeg)
    out = tmp_path / "out"
    if where == "..":
        out, blocker = out / "sub", out
    else:
        blocker = out / where if where else out
    blocker.parent.mkdir(parents=True, exist_ok=True)
    if what == "a folder":
        blocker.mkdir()
    elif what == "a dangling link":
        blocker.symlink_to(tmp_path / "gone")
    else:
        blocker.write_text("in the way")
    before = tree(tmp_path)
    line = start_up_error(label([f"--input={tmp_path}/img/*"], out, probe_model))
    assert line == (
        f"python -m pipeline.run: error: --output {out}: {blocker} is {what}, where {needed}; "
        "move it away or pass another"
    )
    assert tree(tmp_path) == before  # nothing written, not even the probe or the lease
