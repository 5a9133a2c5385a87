"""Manifests: a file (text, CSV or Parquet with a 'uri' column, on any Beam filesystem, or a
pipe read once) -> the URIs it lists, the limits on what it may hold, and its start-up check."""

from __future__ import annotations

import csv
import io
import os
import stat
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.printable import error_line, printable
from transforms.storage.local import StreamError, file_kind, read_stream
from transforms.storage.uris import local_path

URI_COLUMN = "uri"


class InputError(ValueError):
    """A pattern or manifest the job cannot use; the message names it and says why."""


# The longest URI a manifest may list. The longest real ones: a local path of PATH_MAX (4,096
# bytes) written as a file: URI with every byte percent-escaped (12,295 bytes), a gs:// object
# name (1,024 bytes) in a 222-byte bucket; 16 KiB is above all of them, so a longer line is
# not a URI, and it is refused having read no more of it than this.
MAX_URI_BYTES = 16 << 10
MAX_CSV_LINE_BYTES = 1 << 20  # a CSV row may carry other columns beside its URI
MAX_MANIFEST_BYTES = 4 << 30  # a manifest file (read as a stream, never whole in memory)
# A pipe, FIFO or terminal (--input_manifest /dev/stdin) can be read only once: it is read
# whole at start-up, into memory (64 MiB: about 600,000 URIs), and the job lists from that
# copy; waiting for it ends after STREAM_IDLE_SECONDS without a byte (a FIFO no one writes).
MAX_STREAMED_MANIFEST_BYTES = 64 << 20
STREAM_IDLE_SECONDS = 30.0


def manifest_kind(path: str) -> str:
    lowered = path.lower()
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith(".csv"):
        return "csv"
    return "text"


def is_listed(value: str | None) -> bool:
    """Blank values (None, empty, only whitespace) list nothing, in every manifest kind."""
    return bool(value) and not value.isspace()


def text_line(raw: bytes, first: bool) -> str:
    """A text manifest's line: UTF-8 (a byte-order mark at the start of the file ignored),
    its terminator ('\\n', or '\\r\\n') removed and nothing else."""
    line = raw.decode("utf-8-sig" if first else "utf-8")
    return line.removesuffix("\r\n") if line.endswith("\r\n") else line.removesuffix("\n")


def uris_from_text(lines: Iterable[str]) -> Iterator[str]:
    """Lines -> URIs: blank lines and lines starting with '#' are skipped, the rest kept."""
    for line in lines:
        if is_listed(line) and not line.startswith("#"):
            yield line


def bounded_lines(f, path: str, max_bytes: int) -> Iterator[bytes]:
    """A binary file's lines, terminators kept; InputError for a line of more than max_bytes
    (terminator aside), having read at most max_bytes + 2 bytes of it."""
    for number, raw in enumerate(iter(lambda: f.readline(max_bytes + 2), b""), start=1):
        if len(raw.removesuffix(b"\n").removesuffix(b"\r")) > max_bytes:
            raise InputError(
                f"--input_manifest {printable(path)}: line {number} is longer than "
                f"{max_bytes:,} bytes, longer than any URI; is it a manifest?"
            )
        yield raw


def _text_lines(f, path: str) -> Iterator[str]:
    for number, raw in enumerate(bounded_lines(f, path, MAX_URI_BYTES), start=1):
        try:
            yield text_line(raw, number == 1)
        except UnicodeDecodeError:
            raise InputError(
                f"--input_manifest {printable(path)} is not UTF-8 text (line {number}); "
                "save it as UTF-8"
            ) from None


def _csv_uris(f, path: str) -> Iterator[str]:
    lines = bounded_lines(f, path, MAX_CSV_LINE_BYTES)
    reader = csv.reader(
        line.decode("utf-8-sig" if i == 0 else "utf-8") for i, line in enumerate(lines)
    )
    try:
        header = next(reader, [])
        if URI_COLUMN not in header:
            raise InputError(no_uri_column(path))
        column = header.index(URI_COLUMN)
        for row in reader:
            value = row[column] if column < len(row) else None
            if is_listed(value):
                yield check_length(value, path)
    except UnicodeDecodeError:
        raise InputError(
            f"--input_manifest {printable(path)} is not UTF-8 text (near line "
            f"{reader.line_num + 1}); save it as UTF-8"
        ) from None
    except csv.Error as e:
        raise InputError(
            f"--input_manifest {printable(path)} is not a readable CSV file ({error_line(e)})"
        ) from None


def _parquet_uris(f, path: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(f)
        schema = parquet.schema_arrow
    except Exception as e:  # not Parquet, truncated, a corrupt footer
        raise InputError(
            f"--input_manifest {printable(path)} is not a readable Parquet file ({error_line(e)})"
        ) from None
    if URI_COLUMN not in schema.names:
        raise InputError(no_uri_column(path))
    kind = schema.field(URI_COLUMN).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(
            f"--input_manifest {printable(path)}: its '{URI_COLUMN}' column holds {kind}, "
            "not strings; write the image URIs as a string column"
        )
    try:
        for batch in parquet.iter_batches(columns=[URI_COLUMN], batch_size=65_536):
            for value in filter(is_listed, batch.column(0).to_pylist()):
                yield check_length(value, path)
    except InputError:
        raise
    except Exception as e:  # corrupt pages after a good footer
        raise InputError(
            f"--input_manifest {printable(path)} is not a readable Parquet file ({error_line(e)})"
        ) from None


def check_length(value: str, path: str) -> str:
    """A manifest's value, if it is no longer than a URI can be; else InputError."""
    if len(value.encode("utf-8", "surrogatepass")) > MAX_URI_BYTES:
        raise InputError(
            f"--input_manifest {printable(path)} lists a value longer than {MAX_URI_BYTES:,} "
            f"bytes, longer than any URI ({printable(value[:40])}...)"
        )
    return value


def no_uri_column(path: str) -> str:
    return (
        f"--input_manifest {printable(path)} has no '{URI_COLUMN}' column; name the column "
        f"of image URIs '{URI_COLUMN}'"
    )


def open_manifest(path: str, streamed: bytes | None = None):
    """A binary file object for a manifest: `streamed`, the copy start-up read of a pipe,
    FIFO or terminal, where given; else any Beam filesystem; on local disk a regular file of
    at most MAX_MANIFEST_BYTES, or a pipe, FIFO or terminal read now (read_streamed).
    InputError for a block device, a socket or a file over the limit; OSError as raised."""
    if streamed is not None:
        return io.BytesIO(streamed)
    local = local_path(path)
    if local is None:
        return FileSystems.open(path)
    fd = os.open(local, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # never blocks
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(local)
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            return io.BytesIO(read_streamed(path, fd))
        kind = file_kind(mode)
        if kind is not None:
            raise InputError(f"--input_manifest {printable(path)} is {kind}; pass a file")
        size = os.fstat(fd).st_size
        if size > MAX_MANIFEST_BYTES:
            raise InputError(
                f"--input_manifest {printable(path)} is {size:,} bytes, more than the limit "
                f"of {MAX_MANIFEST_BYTES:,}; split it into several runs"
            )
        os.set_blocking(fd, True)
        f, fd = open(fd, "rb"), -1
        return f
    finally:
        if fd >= 0:
            os.close(fd)


def read_streamed(path: str, fd: int) -> bytes:
    """A pipe, FIFO or terminal's bytes, read once (read_stream's bounds); InputError if it
    cannot be read whole."""
    try:
        return read_stream(fd, MAX_STREAMED_MANIFEST_BYTES, STREAM_IDLE_SECONDS)
    except StreamError as e:
        raise InputError(
            f"--input_manifest {printable(path)} is a pipe that {e}, read once at start-up; "
            "write the URIs to a file and pass that"
        ) from None


def is_stream(path: str) -> bool:
    """Whether the manifest is a local pipe, FIFO or terminal (it can be read only once)."""
    local = local_path(path)
    try:
        mode = os.stat(local).st_mode if local is not None else 0
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def manifest_uris(path: str, streamed: bytes | None = None) -> Iterator[str]:
    """Every URI a manifest lists, as written (normalize_uri comes after), any Beam
    filesystem; InputError naming the file for anything that makes it unusable.

    Text: one URI a line (see text_line, uris_from_text). CSV (.csv): the 'uri' column, UTF-8,
    a byte-order mark ignored. Parquet (.parquet): the 'uri' string column. Blank values are
    skipped in all three. `streamed`: what start-up read of a pipe (check_manifest)."""
    try:
        f = open_manifest(path, streamed)
    except IsADirectoryError:
        raise InputError(
            f"--input_manifest {printable(path)} is a folder; pass the manifest file"
        ) from None
    except FileNotFoundError:
        raise InputError(f"--input_manifest {printable(path)} does not exist") from None
    except Exception as e:  # no access, storage faults
        raise InputError(
            f"--input_manifest {printable(path)} cannot be read ({error_line(e)})"
        ) from None
    with f:
        kind = manifest_kind(path)
        if kind == "parquet":
            yield from _parquet_uris(f, path)
        elif kind == "csv":
            yield from _csv_uris(f, path)
        else:
            yield from uris_from_text(_text_lines(f, path))


def check_manifest(path: str) -> bytes | None:
    """Reads the whole manifest once, so that an unusable one stops the run at start-up with
    one line (InputError), never part-way; a manifest listing no URI is unusable too. Returns
    a pipe's, FIFO's or terminal's bytes (it cannot be read again: the run lists from this
    copy), else None."""
    if not FileSystems.exists(path):
        raise InputError(f"--input_manifest {printable(path)} does not exist")
    streamed = None
    if is_stream(path):
        fd = os.open(local_path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            streamed = read_streamed(path, fd)
        finally:
            os.close(fd)
    if sum(1 for _ in manifest_uris(path, streamed)) == 0:  # every line read: all is checked
        raise InputError(f"--input_manifest {printable(path)} lists no URI")
    return streamed


class ReadManifest(beam.PTransform):
    """A manifest file (text, .csv or .parquet with a 'uri' column) -> URIs, as listed;
    `streamed`, start-up's copy of a pipe, travels with the graph."""

    def __init__(self, path: str, streamed: bytes | None = None):
        super().__init__()
        self._path = path
        self._streamed = streamed

    def expand(self, pipeline):
        if self._streamed is not None:
            return pipeline | beam.Create(list(manifest_uris(self._path, self._streamed)))
        return pipeline | beam.Create([self._path]) | beam.FlatMap(manifest_uris)
