"""The last stage: rows -> Parquet under ROOT/<kind>/date=YYYY-MM-DD/ (Hive partitioning), the
rows the partitions already hold (what a run skips), and what a run committed."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider

from transforms.printable import error_line, printable
from transforms.rows import MODEL_VERSION, SOURCE_VERSION
from transforms.storage.uris import glob_escape, local_path
from transforms.vocabulary import ERRORS, KINDS, PREDICTIONS, exception_chain

TEMP_DIR = "_temp"  # '_' keeps pyarrow, Spark and BigQuery from reading it as data
ROWS_PER_GROUP = 10_000
PROBE = "probe"  # the start-up write check's temporary folder: ROOT/_temp/<run id>-probe


def partition_dir(root: str, kind: str, date: str) -> str:
    return FileSystems.join(root.rstrip("/"), kind, f"date={date}")


def part_files(root: str, kind: str, date: str) -> str:
    """Glob of a partition's finished files (temporary files never match it); glob
    characters in ROOT itself stand for themselves."""
    return FileSystems.join(glob_escape(root.rstrip("/")), kind, f"date={date}", "part-*.parquet")


def part_name(run_id: str, shard: int, shards: int) -> str:
    return f"part-{run_id}-{shard:05d}-of-{shards:05d}.parquet"


def temp_dir(root: str, run_id: str, kind: str) -> str:
    return FileSystems.join(root.rstrip("/"), TEMP_DIR, f"{run_id}-{kind}")


def delete_exactly(paths: list[str]) -> None:
    """Deletes exactly these files or folders. Beam's delete matches each path as a glob
    first, so a folder named with '[' or '*' would match nothing: local paths are removed
    here, others are given to Beam with their glob characters escaped."""
    remote = []
    for path in paths:
        local = local_path(path)
        if local is None:
            remote.append(glob_escape(path))
        elif os.path.isdir(local) and not os.path.islink(local):
            shutil.rmtree(local)
        else:
            os.remove(local)
    if remote:
        FileSystems.delete(remote)


def remove_temp(root: str, run_id: str, kinds: tuple[str, ...] = KINDS) -> None:
    """A run's temporary folders, empty by then, go (local disk has folders; object stores
    have none to remove)."""
    paths = [temp_dir(root, run_id, kind) for kind in kinds]
    delete_exactly([p for p in paths if FileSystems.exists(p)])


def probe_writable(root: str, run_id: str) -> None:
    """Writes and deletes one empty file where the run will keep its temporary files, so an
    output the credentials (or the file system) will not take fails before any work; raises
    what the file system raised."""
    probe = FileSystems.join(temp_dir(root, run_id, PROBE), "writable")
    FileSystems.create(probe).close()
    delete_exactly([probe])
    remove_temp(root, run_id, (PROBE,))


def committed_rows(root: str, kind: str, date: str, run_id: str) -> int:
    """Rows this run has in the partition: the files renamed into place, read from their
    footers. What the run counted but is not here was lost."""
    pattern = FileSystems.join(
        glob_escape(partition_dir(root, kind, date)), f"part-{run_id}-*.parquet"
    )
    total = 0
    for meta in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(meta.path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def output_prefixes(root: str) -> tuple[str, ...]:
    """What a run writes under ROOT, as path prefixes (ROOT/predictions/, ROOT/errors/,
    ROOT/_temp/): files starting with one are this job's output, never its input."""
    base = root.rstrip("/")
    return tuple(FileSystems.join(base, name) + "/" for name in (*KINDS, TEMP_DIR))


# The graph's labels of the steps that write each kind (pipeline/graph.py applies them).
WRITE_STEPS = {PREDICTIONS: "WritePredictions", ERRORS: "WriteErrors"}

# errno values that can only mean the output could not take a file; others (a permission, an
# I/O error) count as write faults when a write step raised them.
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^\[\]'\"\n]+)")


def _os_errors(exc: BaseException):
    """The OSErrors (with an errno) in an exception's chain, and in the details Beam's
    BeamIOError keeps per file, outermost first."""
    for link in exception_chain(exc):
        details = getattr(link, "exception_details", None)
        found = [link, *(details.values() if isinstance(details, dict) else ())]
        yield from (e for e in found if isinstance(e, OSError) and isinstance(e.errno, int))


def write_fault(exc: BaseException) -> str | None:
    """What kept the run's output from being written, in a few words ('No space left on
    device'), when `exc`, the failure of a job, is a write fault: a full disk or quota, a
    file-size limit or a read-only file system anywhere in its chain (or, from a runner in
    another process, in its text), or any storage fault raised by a write step. None for
    any other failure (a bug)."""
    text = "\n".join(str(link) for link in exception_chain(exc))
    in_write_step = any(f"while running '{step}" in text for step in WRITE_STEPS.values())
    for error in _os_errors(exc):
        if in_write_step or error.errno in _FULL_OR_READ_ONLY:
            where = f": {error.filename}" if error.filename else ""
            return f"{os.strerror(error.errno)}{where}"
    found = _ERRNO_TEXT.search(text)
    if found and (in_write_step or int(found[1]) in _FULL_OR_READ_ONLY):
        return found[2].strip()
    if in_write_step:
        first = text.splitlines()[0] if text else type(exc).__name__
        return re.sub(r" \[while running '[^']*'\]", "", first)[:300]
    return None


class PartFileError(ValueError):
    """A part-*.parquet file in a partition that cannot be read; the message names it."""


def _unreadable(path: str, why: str) -> PartFileError:
    return PartFileError(
        f"{printable(path)} {why}; move it out of the partition (every part-*.parquet there is "
        "read as this job's output)"
    )


def read_part_file(path: str, columns: list[str] | None = None) -> pa.Table:
    """One partition file's columns; PartFileError naming it if it is not readable Parquet."""
    try:
        with FileSystems.open(path) as f:
            return pq.read_table(f, columns=columns)
    except Exception as e:  # empty, not Parquet, truncated, missing columns
        raise _unreadable(path, f"is not a readable Parquet file ({error_line(e)})") from None


def check_part_file(path: str) -> None:
    """Reads one partition file's footer: Parquet with a string 'uri' column (what a re-run
    reads to skip what is done), else PartFileError naming it."""
    try:
        with FileSystems.open(path) as f:
            schema = pq.ParquetFile(f).schema_arrow
    except Exception as e:  # empty, not Parquet, truncated
        raise _unreadable(path, f"is not a readable Parquet file ({error_line(e)})") from None
    if "uri" not in schema.names or not pa.types.is_string(schema.field("uri").type):
        raise _unreadable(path, "has no string 'uri' column")


def check_partitions(root: str, date: str, threads: int = 16) -> None:
    """Every part-*.parquet of the date's predictions and errors ('*': every date's) has a
    readable footer, so a broken file stops the run at start-up with one line naming it
    (PartFileError)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(check_part_file, done_files(root, date)))


class ParquetSink(fileio.FileSink):
    """Rows (dicts) -> one Parquet file, written in row groups of ROWS_PER_GROUP; `stamp`'s
    columns (the run's model version and preprocessing) are set on every row."""

    def __init__(self, schema: pa.Schema, stamp: dict | None = None):
        self._schema = schema
        self._stamp = stamp or {}

    def open(self, fh) -> None:
        self._writer = pq.ParquetWriter(fh, self._schema, compression="snappy")
        self._rows: list[dict] = []

    def write(self, record: dict) -> None:
        self._rows.append({**record, **self._stamp})
        if len(self._rows) >= ROWS_PER_GROUP:
            self._write_rows()

    def _write_rows(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def flush(self) -> None:
        self._write_rows()
        self._writer.close()  # writes the footer; Beam closes the file itself


class WritePartition(beam.PTransform):
    """Writes one run's rows as part-<run_id>-SSSSS-of-NNNNN.parquet in the date partition.

    Files are written under ROOT/_temp/<run_id>-<kind>/ and renamed into the partition only
    when complete, so a partition holds whole files; a crashed run leaves its debris in
    _temp/, never in the data. run_id keeps runs from overwriting each other.
    """

    def __init__(
        self, root: str, kind: str, date: str, run_id: str, schema: pa.Schema, stamp: dict
    ):
        super().__init__()
        self._root, self._kind, self._date, self._run_id = root, kind, date, run_id
        self._schema, self._stamp = schema, stamp

    def expand(self, rows):
        schema, run_id, stamp = self._schema, self._run_id, self._stamp
        temp = temp_dir(self._root, run_id, self._kind)
        return rows | fileio.WriteToFiles(
            path=partition_dir(self._root, self._kind, self._date),
            file_naming=lambda window, pane, shard, shards, *_: part_name(run_id, shard, shards),
            sink=lambda _destination: ParquetSink(schema, stamp),
            temp_directory=StaticValueProvider(str, temp),
        )


DONE_COLUMNS = ("uri", SOURCE_VERSION, MODEL_VERSION)
Versions = tuple[str | None, str | None]  # a done row's (source_version, model_version)


def done_files(root: str, date: str) -> list[str]:
    """The finished part files of the date's predictions and errors ('*': every date's)."""
    return sorted(
        m.path
        for kind in KINDS
        for m in FileSystems.match([part_files(root, kind, date)])[0].metadata_list
    )


def done_rows(path: str) -> Iterator[tuple[str, Versions]]:
    """(uri, (source_version, model_version)) of each row of one part file, only those
    columns read; a file written before rows carried versions gives (None, None): done
    whatever the version."""
    with FileSystems.open(path) as f:
        parquet = pq.ParquetFile(f)
        columns = [c for c in DONE_COLUMNS if c in parquet.schema_arrow.names]
        table = parquet.read(columns=columns)
    uris = table.column("uri").to_pylist()
    missing = [None] * len(uris)
    versions = [
        table.column(c).to_pylist() if c in columns else missing
        for c in (SOURCE_VERSION, MODEL_VERSION)
    ]
    yield from zip(uris, zip(*versions, strict=True), strict=True)


class ExistingRows(beam.PTransform):
    """(uri, (source_version, model_version)) of every row already in the date's predictions
    and errors ('*': every date's); empty where there is none. The files are found at start-up
    and read in parallel."""

    def __init__(self, root: str, date: str):
        super().__init__()
        self._files = done_files(root, date)

    def expand(self, pipeline):
        return (
            pipeline
            | "PartFiles" >> beam.Create(self._files)
            | "Spread" >> beam.Reshuffle()
            | "ReadDone" >> beam.FlatMap(done_rows)
        )
