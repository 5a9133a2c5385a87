"""Where --output may be: names with glob characters work, and an output inside another
output's predictions/, errors/ or _temp/ is refused."""

from __future__ import annotations

import pathlib

import pytest

from pipeline.config import enclosing_output
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
