"""The last stage: rows -> Parquet under ROOT/<kind>/date=YYYY-MM-DD/ (Hive partitioning, the layout
in storage/layout.py), and what a run committed (what rows mean to a later run: done.py)."""

from __future__ import annotations

import os
import shutil

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider

from transforms.storage.layout import part_name, partition_dir, temp_dir
from transforms.storage.uris import glob_escape, local_path
from transforms.vocabulary import ERRORS, KINDS, PREDICTIONS

ROWS_PER_GROUP = 10_000
PROBE = "probe"  # the start-up write check's temporary folder: ROOT/_temp/<run id>-probe


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


# The graph's labels of the steps that write each kind (pipeline/graph.py applies them).
WRITE_STEPS = {PREDICTIONS: "WritePredictions", ERRORS: "WriteErrors"}


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
