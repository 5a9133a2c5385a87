"""Manifests read once and bounded: a line longer than any URI refused unread, a manifest on
/dev/stdin or a FIFO read once, a FIFO nobody writes one line."""

from __future__ import annotations

import os
import threading

import pytest

from tests.odd_files import BAD_NAME, NAME_MAX, fifo_at, jpeg, label
from tests.test_hostile_inputs import labelled_once, start_up_error
from transforms.manifests import MAX_URI_BYTES, InputError, bounded_lines, manifest_uris
from transforms.storage.uris import uri_for_path


def test_a_manifest_line_longer_than_a_uri_is_refused_unread(tmp_path):
    manifest = tmp_path / "m.txt"
    with open(manifest, "wb") as f:
        f.write(b"/x/ok.jpg\n")
        f.write(b"/x/" + b"a" * (64 << 20) + b"\n")  # 64 MiB, one line
    with pytest.raises(InputError, match="line 2 is longer than"):
        list(manifest_uris(str(manifest)))
    with open(manifest, "rb") as f, pytest.raises(InputError):
        try:
            list(bounded_lines(f, str(manifest), MAX_URI_BYTES))
        finally:
            assert f.tell() <= len(b"/x/ok.jpg\n") + MAX_URI_BYTES + 2  # not the 64 MiB
    fine = tmp_path / "fine.txt"
    fine.write_text("/x/" + "a" * (MAX_URI_BYTES - 3) + "\n")
    assert len(next(manifest_uris(str(fine)))) == MAX_URI_BYTES


# --- Runs of the CLI -----------------------------------------------------------------------


@pytest.mark.slow  # runs the real command
def test_a_manifest_on_stdin_is_read_once(tmp_path, sample_jpeg, probe_model):
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(5)]
    paths.append(jpeg(tmp_path / "img" / BAD_NAME, sample_jpeg))
    lines = [*paths[:5], uri_for_path(paths[5])]
    # The same files written other ways: one URI each.
    lines += ["/" + paths[0], paths[1].replace("/img/", "/img/./"), paths[2].replace("/", "//")]
    too_long = "/x/" + "n" * (NAME_MAX + 1) + ".jpg"  # a name over NAME_MAX: a read error
    out = tmp_path / "out"
    proc = label(
        ["--input_manifest=/dev/stdin", "--max_error_ratio=1"],
        out,
        probe_model,
        input="\n".join([*lines, too_long]) + "\n",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted, failed = labelled_once(out)
    assert predicted == sorted([*paths[:5], uri_for_path(paths[5])])
    assert failed == [too_long]


@pytest.mark.slow  # runs the real command
def test_a_manifest_fifo_is_read_once(tmp_path, sample_jpeg, probe_model):
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(3)]
    fifo = tmp_path / "list.csv"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as f:  # blocks until the run opens it
            f.write("uri\n" + "\n".join(paths) + "\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    out = tmp_path / "out"
    proc = label([f"--input_manifest={fifo}"], out, probe_model, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert labelled_once(out) == (sorted(paths), [])


@pytest.mark.slow  # runs the real command; waits out the idle limit
def test_a_manifest_fifo_nobody_writes_is_one_line(tmp_path, probe_model):
    fifo = fifo_at(tmp_path / "m.txt")
    line = start_up_error(label([f"--input_manifest={fifo}"], tmp_path / "out", probe_model))
    assert f"--input_manifest {fifo}" in line and "nothing arrived" in line
