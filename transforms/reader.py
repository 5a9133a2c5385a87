"""Stage 2's reads, before decoding: one object's bytes, bounded. Only regular files are read,
never more than max_bytes + 1 of them (gs:// has its own module, transforms/gcs_reads.py,
on the budget and bounds here); no Beam transforms here.

Every read holds its bytes in a ByteBudget from before the read until the caller releases
them (after decoding), so bytes in flight stay under a limit whatever the object sizes.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable

from transforms import vocabulary as v
from transforms.inputs import file_uri_path

MB = 1 << 20
CHUNK = 1 * MB  # the most asked of a file in one read() call past its expected size

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class ByteBudget:
    """Bytes held by reads not yet decoded, at most `limit` of them.

    acquire() waits until the bytes fit; one request larger than the whole limit is let in
    when nothing else is held, so an object up to the size limit is never refused for it.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.peak = 0  # the most ever held at once
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
            self.peak = max(self.peak, self._used)

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
                self.peak = max(self.peak, self._used)


def file_kind(mode: int) -> str | None:
    """'a folder', 'a socket', ... for what is not a regular file; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def too_large(uri: str, size: int, max_bytes: int) -> v.ImageError:
    return v.ImageError(
        v.TOO_LARGE,
        f"{uri} is {size:,} bytes, more than the limit of {max_bytes:,} (--max_object_mb)",
    )


def check_stat(uri: str, st: os.stat_result, max_bytes: int) -> None:
    """Refuses, from the metadata alone, what is not a regular file or is too large."""
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise v.ImageError(v.NOT_A_FILE, f"{uri} is {kind}, not a regular file")
    if st.st_size > max_bytes:
        raise too_large(uri, st.st_size, max_bytes)


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


def local_path(uri: str) -> str | None:
    """The local path a URI names (a plain path or a local file: URI, decoded as inputs do), or
    None for other schemes."""
    if (path := file_uri_path(uri)) is not None:
        return path
    scheme, sep, _ = uri.partition("://")
    return uri if not sep or not scheme.isalnum() else None


def read_local(path: str, max_bytes: int, budget: ByteBudget) -> bytes:
    """A local regular file's bytes; on return len(result) bytes are held in `budget`.

    Stats before opening, so a FIFO, device, socket or folder is refused without being
    opened; opens non-blocking and checks the open file again, so a swap in between cannot
    block either.
    """
    check_stat(path, os.stat(path), max_bytes)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb", buffering=0, closefd=True) as f:
        st = os.fstat(fd)
        check_stat(path, st, max_bytes)
        budget.acquire(st.st_size)
        try:
            data = read_at_most(f.read, st.st_size, max_bytes, path)
        except BaseException:
            budget.release(st.st_size)
            raise
    budget.resize(st.st_size, len(data))
    return data


def read_bounded(uri: str, max_bytes: int, budget: ByteBudget) -> bytes:
    """Any URI but gs:// (transforms/gcs_reads.py): a local path or file: URI with read_local,
    any other Beam filesystem with read_beam; on return len(result) bytes are held in
    `budget`."""
    path = local_path(uri)
    if path is not None:
        return read_local(path, max_bytes, budget)
    return read_beam(uri, max_bytes, budget)


def read_beam(uri: str, max_bytes: int, budget: ByteBudget) -> bytes:
    """Any other Beam filesystem (s3://, hdfs://, ...): its size from a match, then a
    bounded read; on return len(result) bytes are held in `budget`."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    found = FileSystems.match([uri], limits=[1])[0].metadata_list
    if not found:
        raise FileNotFoundError(f"{uri} does not exist")
    size = found[0].size_in_bytes
    if size > max_bytes:
        raise too_large(uri, size, max_bytes)
    budget.acquire(size)
    try:
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            data = read_at_most(f.read, size, max_bytes, uri)
    except BaseException:
        budget.release(size)
        raise
    budget.resize(size, len(data))
    return data
