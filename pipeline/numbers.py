"""The numbers a run shows people, one way everywhere (the progress line, the summary, --plan):
durations as people read them (1.8s, 41s, 1m12s, 3h05m) and the rate, images done per second
since the run started."""

from __future__ import annotations

import re


def duration(seconds: float) -> str:
    """'1.8s' under 10 s, '41s' under a minute, '1m12s' under an hour, then '3h05m'
    ('1,234h05m' for a cluster's hours); rounded to the unit shown, so 59.6 s is '1m00s'."""
    seconds = max(0.0, seconds)
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours:,}h{minutes:02d}m"


DURATION = re.compile(r"^(?:(?P<h>[\d,]+)h(?P<hm>\d\d)m|(?:(?P<m>\d+)m)?(?P<s>[\d.]+)s)$")


def seconds_of(text: str) -> float:
    """The seconds a duration() text stands for (to its rounding); ValueError if it is not
    one (benchmarks read the summary's time back with it)."""
    found = DURATION.match(text)
    if not found:
        raise ValueError(f"not a duration: {text!r}")
    if found["h"]:
        return int(found["h"].replace(",", "")) * 3600 + int(found["hm"]) * 60
    return int(found["m"] or 0) * 60 + float(found["s"])


def rate(done: int, seconds: float) -> float:
    """Images per second: images done over the seconds since the run started (its start-up,
    listing and model loading included), the same in the progress line and the summary."""
    return done / seconds if seconds > 0 else 0.0


def per_second(done: int, seconds: float) -> str:
    """'1,203.4 images/s': rate() as the progress line and the summary print it."""
    return f"{rate(done, seconds):,.1f} images/s"
