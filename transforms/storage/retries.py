"""When a storage read is tried again (gcs.py's reads): the one home of that policy.

A fault is told by its exception's type or HTTP status, never by a library's message text:
PERMANENT (404, 403, a refusal of this project's own, anything unknown) is not tried again;
TRANSIENT (what Beam's storage retry policy retries: 408, 429, 5xx, dropped or reset
connections, timeouts, and a body that ends before its Content-Length) is tried again with
Beam's back-off until its deadline; DATA (a stored checksum not matched by the bytes
received) is tried again too, within the same deadline, at most MAX_DATA_ATTEMPTS times: the
same mismatch that often is the stored object, not the network. A read that finally fails
raises its last fault with the attempt count as a note (rows.describe shows it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Beam's storage retry policy (apache_beam.io.gcp.gcsio_retry, google.api_core's defaults):
# back-off from 1 s doubling to 60 s, no attempt started after 120 s.
RETRY_SECONDS = 120.0
FIRST_DELAY_S, MAX_DELAY_S, MULTIPLIER = 1.0, 60.0, 2.0
MAX_DATA_ATTEMPTS = 3

TRANSIENT, DATA, PERMANENT = "transient", "data", "permanent"


class ChecksumMismatch(Exception):
    """The bytes received do not match the object's stored checksum."""


class ShortBody(ConnectionError):
    """A reply whose body ended, the connection closed cleanly, before its Content-Length."""


def fault_kind(exc: BaseException) -> str:
    """TRANSIENT, DATA or PERMANENT, from the exception's type (and an HTTP error's status)."""
    from google.cloud.storage.retry import _should_retry  # the predicate Beam's policy uses

    if isinstance(exc, ChecksumMismatch):
        return DATA
    if isinstance(exc, ShortBody | ConnectionError | TimeoutError):
        return TRANSIENT
    if isinstance(exc, Exception) and _should_retry(exc):
        return TRANSIENT
    return PERMANENT


def backoff() -> Iterator[float]:
    """Beam's policy's sleeps between attempts (jittered, truncated exponential)."""
    from google.api_core.retry import exponential_sleep_generator

    return exponential_sleep_generator(FIRST_DELAY_S, MAX_DELAY_S, MULTIPLIER)


def with_retries(
    attempt: Callable[[], T],
    delays: Iterator[float] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    seconds: float = RETRY_SECONDS,
) -> T:
    """attempt()'s result, tried again on TRANSIENT and DATA faults (see the module) while
    the next attempt would start within `seconds`; the last fault raised as it is, with
    "N attempts" added as a note when there were several."""
    delays = delays if delays is not None else backoff()
    deadline = clock() + seconds
    attempts = data_faults = 0
    while True:
        attempts += 1
        try:
            return attempt()
        except Exception as e:
            kind = fault_kind(e)
            data_faults += kind == DATA
            delay = next(delays)
            if kind == PERMANENT or data_faults >= MAX_DATA_ATTEMPTS or clock() + delay > deadline:
                if attempts > 1:
                    e.add_note(f"{attempts} attempts")
                raise
        sleep(delay)
