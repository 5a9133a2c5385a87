"""The progress display: its wording as a pure function, and the real CLI writing it to a
terminal (one line refreshed in place), to a pipe (plain lines) and not at all (--quiet)."""

import io
import os
import pty
import subprocess
import sys
import time

import pytest

from pipeline.progress import ProgressPrinter, format_progress
from tests.runs import ROOT, cli
from transforms.metrics import FAILED, LABELLED, LIVE, QUEUED


def counts(queued, labelled, failed):
    return {QUEUED: queued, LABELLED: labelled, FAILED: failed}


def test_progress_wording():
    assert format_progress(counts(0, 0, 0), 2, 0) == "labelling: listing the inputs (2.0s)"
    assert format_progress(counts(0, 0, 0), 3, 0, final=True) == (
        "labelling: nothing new to label (3.0s)"  # everything was already in the output
    )
    assert format_progress(counts(40, 0, 0), 9, 0) == (
        "labelling: 40 images to label, waiting for the first (9.0s)"
    )
    # 30 done 25 s after the start: 1.2 images/s, as the summary counts; the ETA goes by the
    # pace since the first was labelled (10 s ago, 3 images/s): 1,170 left -> 6.5 min.
    assert format_progress(counts(1200, 28, 2), 25, 10) == (
        "labelling: 30 of 1,200 images (2.5%), 2 failed, 1.2 images/s, ETA 6m30s (25s)"
    )
    assert format_progress(counts(5_000_000, 1_234_567, 0), 1000, 990) == (
        "labelling: 1,234,567 of 5,000,000 images (24.7%), 0 failed, 1,234.6 images/s, "
        "ETA 50m20s (16m40s)"
    )
    # Under a second of labelling: no rate yet (it would count the model's loading).
    assert format_progress(counts(4, 3, 1), 3, 0.5) == (
        "labelling: 4 of 4 images (100.0%), 1 failed (3.0s)"
    )


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def written_until(stream: Stream, enough, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not enough(stream.getvalue()) and time.monotonic() < deadline:
        time.sleep(0.005)
    return stream.getvalue()


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "terminal"])
def test_the_printer_writes_periodically_then_a_final_line(tty):
    LIVE.reset()
    stream = Stream(tty)
    printer = ProgressPrinter(stream, interval=0.01, refresh=0.01).start()
    LIVE.add(QUEUED)
    separator = "\r\x1b[K" if tty else "\n"
    written = written_until(stream, lambda text: text.count(separator) >= 3)
    LIVE.add(LABELLED)
    printer.stop()
    assert written.count(separator) >= 3, "periodic lines while it runs"
    text = stream.getvalue()
    if tty:
        assert "\n" not in text[:-1] and text.endswith("\n")  # one line, rewritten in place
        final = text.rsplit("\r\x1b[K", 1)[1]
    else:
        assert "\r" not in text
        final = text.splitlines()[-1]
    assert final.startswith("labelling: 1 of 1 images (100.0%), 0 failed")


def job_args(image_dir, probe_model, out) -> list[str]:
    return [
        f"--input={image_dir['root']}/**",
        f"--output={out}",
        f"--model={probe_model}",
        "--max_error_ratio=0.5",  # the test folders hold 5 bad files of 35
        "--image_size=64",
        "--batch_size=2",
    ]


@pytest.mark.slow
def test_plain_lines_when_not_a_terminal(image_dir, probe_model, tmp_path):
    proc = cli(*job_args(image_dir, probe_model, tmp_path / "out"), "--progress_interval=0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("labelling: ")]
    total = len(image_dir["good"]) + len(image_dir["patches"]) + len(image_dir["bad"])
    # However long the run took (the periodic lines are tested on the printer itself).
    assert lines and lines[-1].startswith(
        f"labelling: {total} of {total} images (100.0%), 5 failed"
    )
    assert "\r" not in proc.stderr


@pytest.mark.slow
def test_one_line_in_place_on_a_terminal(image_dir, probe_model, tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run", *job_args(image_dir, probe_model, tmp_path / "o")],
        cwd=ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    screen = b"".join(chunks).decode(errors="replace")
    refreshes = screen.split("\r\x1b[K")
    assert len(refreshes) >= 2  # the line written in place (at least the final time)
    total = len(image_dir["good"]) + len(image_dir["patches"]) + len(image_dir["bad"])
    assert refreshes[-1].startswith(f"labelling: {total} of {total} images (100.0%)")
    good = len(image_dir["good"]) + len(image_dir["patches"])
    assert f"\nlabelled {good} of {total} images" in refreshes[-1]  # then the summary


@pytest.mark.slow
def test_quiet_shows_only_the_summary(image_dir, probe_model, tmp_path):
    proc = cli(*job_args(image_dir, probe_model, tmp_path / "out"), "--quiet")
    assert proc.returncode == 0
    assert "labelling: " not in proc.stderr
    good = len(image_dir["good"]) + len(image_dir["patches"])
    total = good + len(image_dir["bad"])
    assert proc.stderr.strip().splitlines()[-1].startswith(f"labelled {good} of {total} images")
