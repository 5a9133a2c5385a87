"""Bounds every read shares: bytes in flight under a budget, and never more of an object than
its size limit (local.py and gcs.py read through these)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from transforms import vocabulary as v

MB = 1 << 20
CHUNK = 1 * MB  # the most asked of a file in one read() call past its expected size


class ByteBudget:
    """Bytes held by reads not yet decoded, at most `limit` of them.

    acquire() waits until the bytes fit; one request larger than the whole limit is let in
    when nothing else is held, so an object up to the size limit is never refused for it.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._used = 0
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    def acquire(self, n: int) -> None:
        with self._changed:
            while self._used and self._used + n > self.limit:
                self._changed.wait()
            self._used += n

    def release(self, n: int) -> None:
        with self._changed:
            self._used -= n
            self._changed.notify_all()

    def resize(self, held: int, n: int) -> None:
        """A hold of `held` bytes becomes one of `n` (a file that changed while read)."""
        if n < held:
            self.release(held - n)
        elif n > held:
            with self._changed:
                self._used += n - held


def too_large(uri: str, size: int, max_bytes: int) -> v.ImageError:
    return v.ImageError(
        v.TOO_LARGE,
        f"{uri} is {size:,} bytes, more than the limit of {max_bytes:,} (--max_object_mb)",
    )


def read_at_most(read: Callable[[int], bytes], expected: int, max_bytes: int, uri: str) -> bytes:
    """Reads to the end: `expected` + 1 bytes asked first, then CHUNK at a time; past
    max_bytes (a file that grew or lied about its size) it stops and raises too large,
    having read at most max_bytes + 1 bytes."""
    limit = max_bytes + 1
    parts = [read(min(expected + 1, limit))]
    total = len(parts[0])
    while parts[-1] and total < limit and total > expected:
        parts.append(read(min(CHUNK, limit - total)))
        total += len(parts[-1])
    if total > max_bytes:
        raise too_large(uri, total, max_bytes)
    return parts[0] if len(parts) == 1 else b"".join(parts)
