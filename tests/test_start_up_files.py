"""Files read at start-up (labels, manifests, a model's saved_model.pb): regular files only,
bounded, each bad one a single line (exit 2); labels split on line feeds only."""

from __future__ import annotations

import os
import pathlib

import pytest

from tests.odd_files import fifo_at, label
from tests.test_hostile_inputs import start_up_error
from transforms.models.labels import parse_labels
from transforms.storage.local import read_whole
from transforms.vocabulary import ImageError


def test_start_up_reads_take_regular_files_only_and_bounded(tmp_path):
    small = tmp_path / "labels.txt"
    small.write_bytes(b"a\nb\n")
    assert read_whole(str(small), 10) == b"a\nb\n"
    with pytest.raises(ImageError, match="too large|more than"):
        read_whole(str(small), 3)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo), str(tmp_path)):
        with pytest.raises(ImageError, match="not a regular file"):
            read_whole(path, 1 << 20)


def test_labels_split_on_line_feeds_only():
    data = "a\nb\x85c\r\nd\u2028e\nf\x0cg\x0bh\x1ci\n\n".encode()
    assert parse_labels(data) == ["a", "b\x85c", "d\u2028e", "f\x0cg\x0bh\x1ci"]
    assert parse_labels(b"\xef\xbb\xbfa\nb") == ["a", "b"]  # a byte-order mark is not a name


# --- Runs of the CLI -----------------------------------------------------------------------


def sparse(path: pathlib.Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def model_with_pb(tmp_path: pathlib.Path, probe_model: str, make) -> str:
    """A copy of the probe model whose saved_model.pb is replaced by make(path)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(probe_model, model, symlinks=True)
    (model / "saved_model.pb").unlink()
    make(model / "saved_model.pb")
    return str(model)


def link_to(target: str):
    return lambda p: p.symlink_to(target)


BAD_START_UP_READS = {
    "labels /dev/zero": ("--labels_file", lambda t: "/dev/zero", "not a regular file"),
    "labels fifo": ("--labels_file", lambda t: fifo_at(t / "fifo"), "not a regular file"),
    "labels folder": ("--labels_file", lambda t: str(t), "not a regular file"),
    "labels 2 GiB": ("--labels_file", lambda t: sparse(t / "big.txt", 2 << 30), "more than"),
    "manifest /dev/zero": ("--input_manifest", lambda t: "/dev/zero", "more than"),
    "manifest one long line": (
        "--input_manifest",
        lambda t: sparse(t / "m.txt", 1 << 30),
        "line 1 is longer than",
    ),
    "manifest 8 GiB": ("--input_manifest", lambda t: sparse(t / "m.csv", 8 << 30), "more than"),
    "manifest block device": ("--input_manifest", lambda t: "/dev/loop0", "block device"),
}


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("case", BAD_START_UP_READS)
def test_a_bad_start_up_file_is_one_line(case, tmp_path, image_dir, probe_model):
    flag, make, message = BAD_START_UP_READS[case]
    if case.endswith("block device") and not os.path.exists("/dev/loop0"):
        pytest.skip("no block device here")
    path = make(tmp_path)
    inputs = [] if flag == "--input_manifest" else [f"--input={image_dir['root']}/*.png"]
    out = tmp_path / "out"
    line = start_up_error(label([*inputs, f"{flag}={path}"], out, probe_model, timeout=90))
    assert f"{flag} {path}" in line and message in line
    assert not out.exists()


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize(
    "make,message",
    [
        (link_to("/dev/zero"), "not a regular file"),
        (fifo_at, "not a regular file"),
        (lambda p: sparse(p, 3 << 30), "more than"),
    ],
    ids=["dev-zero", "fifo", "3GiB"],
)
def test_a_bad_saved_model_pb_is_one_line(make, message, tmp_path, image_dir, probe_model):
    model = model_with_pb(tmp_path, probe_model, make)
    proc = label([f"--input={image_dir['root']}/*.png"], tmp_path / "out", model, timeout=90)
    line = start_up_error(proc)
    assert f"--model {model}" in line and "saved_model.pb" in line and message in line


@pytest.mark.slow  # runs the real command
def test_labels_with_unicode_line_breaks_inside_names(tmp_path, image_dir, probe_model):
    names = [f"class {i}" for i in range(1000)]
    names[1], names[2], names[3] = "next\x85line", "line\u2028sep", "form\x0cfeed"
    labels = tmp_path / "labels.txt"
    labels.write_bytes(("\r\n".join(names) + "\r\n").encode())
    out = tmp_path / "out"
    inputs = [f"--input={image_dir['root']}/*.png", f"--labels_file={labels}"]
    proc = label(inputs, out, probe_model, "--max_error_ratio=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
