"""What the command's exit status and last line say: too many failed images (3), output that
did not reach its partition (4), Ctrl-C and SIGTERM (130, 143: stopped, resumable), and a
TensorFlow start-up that prints nothing. Real runs of the real command."""

import pathlib
import signal

import pytest

from tests.gcs_proxy import Gate
from tests.runs import cli, read_rows, signal_at_gate, storage_through_gate
from tests.test_faults import in_the_way_once_started, running

pytestmark = pytest.mark.slow  # every test here runs the real command


def job(image_dir, probe_model, out, *extra) -> list[str]:
    return [
        f"--output={out}",
        f"--model={probe_model}",
        "--image_size=32",
        "--date=2025-04-01",
        "--quiet",
        *extra,
    ]


def every_uri(image_dir) -> list[str]:
    return sorted([*image_dir["good"], *image_dir["patches"], *image_dir["bad"]])


def stored_uris(out) -> list[str]:
    return sorted(r["uri"] for kind in ("predictions", "errors") for r in read_rows(str(out), kind))


def test_every_image_failed_exits_3_after_writing_the_errors(image_dir, probe_model, tmp_path):
    out = tmp_path / "out"
    bad = [f"--input={uri}" for uri in image_dir["bad"]]
    proc = cli(*bad, *job(image_dir, probe_model, out, "--max_error_ratio=1"))
    assert proc.returncode == 3, proc.stderr[-3000:]
    n = len(image_dir["bad"])
    assert proc.stderr.splitlines()[-1] == (
        f"python -m pipeline.run: error: {n} of {n} images failed (100%): a run where every "
        "image failed fails whatever --max_error_ratio says (it is 1); the error rows say why"
    )
    assert stored_uris(out) == sorted(image_dir["bad"])


@pytest.mark.parametrize("ratio,status", [("0.1", 3), ("0.2", 0)])
def test_error_ratio_decides_the_status(ratio, status, image_dir, probe_model, tmp_path):
    out = tmp_path / "out"  # 5 bad files of 35: 14%
    args = job(image_dir, probe_model, out, f"--max_error_ratio={ratio}")
    proc = cli(f"--input={image_dir['root']}/**", *args)
    assert proc.returncode == status, proc.stderr[-3000:]
    assert stored_uris(out) == every_uri(image_dir)  # written in full either way
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("python -m pipeline.run: error: 5 of 35") == (status == 3)


def test_output_that_cannot_be_committed_exits_4_and_claims_nothing(
    image_dir, probe_model, tmp_path
):
    """ROOT/predictions made a file once the run has started (start-up refuses one that is
    there before: tests/test_output_paths.py)."""
    out = tmp_path / "out"
    n = len(image_dir["patches"])
    args = [f"--input={image_dir['root']}/patch_*.png", *job(image_dir, probe_model, out)]
    with running(args) as proc:
        in_the_way_once_started(proc, out, "predictions")
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 4, stderr[-3000:]
    summary, error = stderr.splitlines()[-2:]
    assert summary.startswith(f"labelled 0 of {n} images ({n} more labelled but not written)")
    assert error == (
        f"python -m pipeline.run: error: {n} predictions rows of this run were not written "
        "to their partitions; re-running the same command labels those images again"
    )
    assert "Traceback" not in stderr


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_cleanly_and_the_same_command_resumes(
    sig, status, gcs, gcs_images, probe_model, tmp_path
):
    """The signal arrives while the run waits on its 20th image download (held for it)."""
    out = tmp_path / "out"
    args = [f"--input={gcs_images['root']}/**", *job(gcs_images, probe_model, out)]
    args += ["--batch_size=2", "--max_error_ratio=0.5"]

    gate = Gate(20, "images/")
    with storage_through_gate(gcs.port, gate) as env:
        returncode, stderr = signal_at_gate(args, gate, sig, env)
    assert returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    (last,) = stderr.splitlines()[-1:]
    assert last.startswith("python -m pipeline.run: stopped; ")
    assert last.endswith(
        "Run the same command again to resume: what is kept is not labelled twice."
    )
    partitions = list(out.glob("*/date=*/*"))
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in partitions)

    again = cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert stored_uris(out) == every_uri(gcs_images)


def test_tensorflow_start_up_prints_nothing_and_leaves_nothing(image_dir, probe_model, tmp_path):
    """Without TF_CPP_MIN_LOG_LEVEL set, a good run's stderr is the summary line alone (a new
    interpreter: TensorFlow's start-up included), and the system's temporary folder holds
    nothing of the run afterwards (TensorFlow's generated code, Beam's staging folders)."""
    out, temp = tmp_path / "out", tmp_path / "tmp"
    temp.mkdir()
    args = job(image_dir, probe_model, out)
    inputs = f"--input={image_dir['root']}/patch_*.png"
    proc = cli(inputs, *args, fresh=True, env={"TMPDIR": str(temp)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"labelled {len(image_dir['patches'])} of ")
    assert pathlib.Path(out).exists()
    assert not list(temp.iterdir())


def test_inputs_a_library_warns_about_are_labelled_quietly(image_dir, probe_model, tmp_path):
    """A JPEG whose EXIF points past its end (Pillow warns "Truncated File Read" as it reads
    the orientation), and a JPEG whose end marker (FFD9) is missing, among good images: all
    labelled, and stderr is the summary alone."""
    import io
    import struct

    import numpy as np
    from PIL import Image

    folder = tmp_path / "quietly"
    folder.mkdir()
    picture = Image.fromarray(np.full((32, 32, 3), (200, 30, 60), np.uint8))
    # One IFD entry: ImageDescription, 100 bytes at offset 4000, past the EXIF's end.
    ifd = struct.pack("<HHHII", 1, 270, 2, 100, 4000) + struct.pack("<I", 0)
    odd = io.BytesIO()
    picture.save(odd, "JPEG", quality=90, exif=b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd)
    (folder / "odd_exif.jpg").write_bytes(odd.getvalue())
    jpeg = io.BytesIO()
    picture.save(jpeg, "JPEG", quality=90)
    (folder / "no_end.jpg").write_bytes(jpeg.getvalue()[:-2])
    for name in ("a.png", "b.png"):
        picture.save(folder / name)
    out = tmp_path / "out"
    proc = cli(f"--input={folder}/*", *job(image_dir, probe_model, out, "--max_error_ratio=0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
    assert proc.stderr.startswith("labelled 4 of 4 images, 0 failed")
    assert read_rows(str(out), "errors") == []
    assert sorted(pathlib.Path(r["uri"]).name for r in read_rows(str(out), "predictions")) == [
        "a.png",
        "b.png",
        "no_end.jpg",
        "odd_exif.jpg",
    ]
