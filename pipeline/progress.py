"""While an in-process run goes: images done of the total, rate, errors and ETA on stderr,
one line refreshed in place on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import threading
import time
from typing import TextIO

from pipeline.numbers import duration, per_second
from transforms.metrics import FAILED, LABELLED, LISTED, LIVE, QUEUED


def format_progress(
    counts: dict[str, int], seconds: float, labelling_seconds: float, final: bool = False
) -> str:
    """counts: queued/labelled/failed so far; seconds since the run started (the rate's
    window, as in the summary: pipeline/numbers.rate); labelling_seconds since the first
    image was labelled (the ETA's pace, so model loading does not stretch it; no rate or ETA
    until it is 1 s long)."""
    done = counts[LABELLED] + counts[FAILED]
    total = counts[QUEUED]
    if total == 0:
        listed = counts.get(LISTED, 0)
        what = "nothing new to label" if final else "listing the inputs"
        what += f", {listed:,} found" if listed and not final else ""
        return f"labelling: {what} ({duration(seconds)})"
    if done == 0:
        return f"labelling: {total:,} images to label, waiting for the first ({duration(seconds)})"
    line = f"labelling: {done:,} of {total:,} images ({100 * done / total:.1f}%)"
    line += f", {counts[FAILED]:,} failed"
    if labelling_seconds >= 1:
        line += f", {per_second(done, seconds)}"
        if done < total:
            line += f", ETA {duration((total - done) * labelling_seconds / done)}"
    return line + f" ({duration(seconds)})"


class ProgressPrinter:
    """Prints LIVE's counts on a background thread until stop(), which prints the last line."""

    def __init__(self, stream: TextIO, interval: float, refresh: float = 0.5):
        self._stream = stream
        self._tty = stream.isatty()
        self._interval = interval
        self._refresh = min(refresh, interval)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def start(self, started: float | None = None) -> ProgressPrinter:
        """`started`: the run's start (time.monotonic()), the summary's too; default now."""
        LIVE.reset()
        self._started = time.monotonic() if started is None else started
        self._first_labelled: float | None = None
        self._thread.start()
        return self

    def _line(self, final: bool = False) -> str:
        counts = LIVE.snapshot()
        now = time.monotonic()
        if self._first_labelled is None and counts[LABELLED]:
            self._first_labelled = now
        since_first = now - self._first_labelled if self._first_labelled else 0.0
        return format_progress(counts, now - self._started, since_first, final)

    def _write(self, line: str, final: bool = False) -> None:
        if self._tty:
            self._stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stopped.wait(self._refresh):
            if self._tty or time.monotonic() - last >= self._interval:
                self._write(self._line())
                last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._write(self._line(final=True), final=True)
