"""Bounded reads of local files and of any Beam filesystem but gs:// (storage/gcs.py): only
regular files, never more than max_bytes + 1 bytes, held in a ByteBudget until the caller
releases them (after decoding), so bytes in flight stay under a limit whatever the sizes."""

from __future__ import annotations

import functools
import os
import select
import stat

from transforms import vocabulary as v
from transforms.storage.bounded import CHUNK, ByteBudget, read_at_most, too_large
from transforms.storage.uris import local_path

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str | None:
    """'a folder', 'a socket', ... for what is not a regular file; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_stat(uri: str, st: os.stat_result, max_bytes: int) -> None:
    """Refuses, from the metadata alone, what is not a regular file or is too large."""
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise v.ImageError(v.NOT_A_FILE, f"{uri} is {kind}, not a regular file")
    if st.st_size > max_bytes:
        raise too_large(uri, st.st_size, max_bytes)


def _refuse_folder(path: str) -> None:
    """A folder among the inputs (a manifest names it, or '**' met one it could not list):
    'no access' when it cannot be listed, since its files are then unknown; else what
    check_stat says of any folder."""
    try:
        os.scandir(path).close()
    except PermissionError as e:
        raise v.ImageError(
            v.NO_ACCESS,
            f"{path} is a folder that cannot be listed ({e.strerror}): its files are not known",
        ) from None


def read_local(path: str, max_bytes: int, budget: ByteBudget) -> bytes:
    """A local regular file's bytes; on return len(result) bytes are held in `budget`.

    Stats before opening, so a FIFO, device, socket or folder is refused without being
    opened; opens non-blocking and checks the open file again, so a swap in between cannot
    block either.
    """
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        _refuse_folder(path)
    check_stat(path, st, max_bytes)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:  # os.read on the descriptor: a file object around it costs a stat and an object
        st = os.fstat(fd)
        check_stat(path, st, max_bytes)
        budget.acquire(st.st_size)
        try:
            data = read_at_most(functools.partial(os.read, fd), st.st_size, max_bytes, path)
        except BaseException:
            budget.release(st.st_size)
            raise
    finally:
        os.close(fd)
    budget.resize(st.st_size, len(data))
    return data


def read_bounded(uri: str, max_bytes: int, budget: ByteBudget) -> bytes:
    """Any URI but gs:// (transforms/storage/gcs.py): a local path or file: URI with read_local,
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


def read_whole(uri: str, max_bytes: int) -> bytes:
    """A file the job reads at start-up (a labels file, a model's saved_model.pb), read as
    an image is (read_bounded, on a budget of its own): a regular file of at most max_bytes,
    else ImageError (NOT_A_FILE or TOO_LARGE) without reading past the limit, or the OSError
    the file system raised. A FIFO or device is refused from its metadata, never opened."""
    try:
        return read_bounded(uri, max_bytes, ByteBudget(max_bytes))
    except v.ImageError as e:
        if e.reason != v.TOO_LARGE:
            raise
        raise v.ImageError(v.TOO_LARGE, f"{uri} is more than {max_bytes:,} bytes") from None


class StreamError(ValueError):
    """A pipe, FIFO or terminal that could not be read whole: too much, or silent too long."""


def read_stream(fd: int, max_bytes: int, idle_seconds: float) -> bytes:
    """Everything an open pipe, FIFO or character device (an --input_manifest of
    /dev/stdin) gives until its end, read once: StreamError past max_bytes (having read at
    most max_bytes + 1 bytes, so /dev/zero is refused in bounded memory) or when nothing
    arrives for idle_seconds (a FIFO no one writes to). `fd` must be non-blocking."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    parts, total = [], 0
    while True:
        if not poller.poll(int(idle_seconds * 1000)):
            raise StreamError(f"nothing arrived for {idle_seconds:g} s")
        try:
            chunk = os.read(fd, min(CHUNK, max_bytes + 1 - total))
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise StreamError(f"gives more than {max_bytes:,} bytes")
