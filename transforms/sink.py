"""Stage 5: rows -> Parquet under ROOT/<kind>/date=YYYY-MM-DD/ (Hive partitioning), and the
URIs a date's partitions already hold (what a re-run skips)."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider

from transforms.vocabulary import KINDS

TEMP_DIR = "_temp"  # '_' keeps pyarrow, Spark and BigQuery from reading it as data
ROWS_PER_GROUP = 10_000


def partition_dir(root: str, kind: str, date: str) -> str:
    return FileSystems.join(root.rstrip("/"), kind, f"date={date}")


def part_files(root: str, kind: str, date: str) -> str:
    """Glob of a partition's finished files (temporary files never match it)."""
    return FileSystems.join(partition_dir(root, kind, date), "part-*.parquet")


def part_name(run_id: str, shard: int, shards: int) -> str:
    return f"part-{run_id}-{shard:05d}-of-{shards:05d}.parquet"


def temp_dir(root: str, run_id: str, kind: str) -> str:
    return FileSystems.join(root.rstrip("/"), TEMP_DIR, f"{run_id}-{kind}")


def remove_temp(root: str, run_id: str, kinds: tuple[str, ...] = KINDS) -> None:
    """A run's temporary folders, empty by then, go (local disk has folders; object stores
    have none to remove)."""
    paths = [temp_dir(root, run_id, kind) for kind in kinds]
    FileSystems.delete([p for p in paths if FileSystems.exists(p)])


class ParquetSink(fileio.FileSink):
    """Rows (dicts) -> one Parquet file, written in row groups of ROWS_PER_GROUP."""

    def __init__(self, schema: pa.Schema):
        self._schema = schema

    def open(self, fh) -> None:
        self._writer = pq.ParquetWriter(fh, self._schema, compression="snappy")
        self._rows: list[dict] = []

    def write(self, record: dict) -> None:
        self._rows.append(record)
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

    def __init__(self, root: str, kind: str, date: str, run_id: str, schema: pa.Schema):
        super().__init__()
        self._root, self._kind, self._date, self._run_id = root, kind, date, run_id
        self._schema = schema

    def expand(self, rows):
        schema, run_id = self._schema, self._run_id
        temp = temp_dir(self._root, run_id, self._kind)
        return rows | fileio.WriteToFiles(
            path=partition_dir(self._root, self._kind, self._date),
            file_naming=lambda window, pane, shard, shards, *_: part_name(run_id, shard, shards),
            sink=lambda _destination: ParquetSink(schema),
            temp_directory=StaticValueProvider(str, temp),
        )


class ExistingUris(beam.PTransform):
    """Every URI already in the date's predictions or errors (empty for a new date)."""

    def __init__(self, root: str, date: str):
        super().__init__()
        self._patterns = [part_files(root, kind, date) for kind in KINDS]

    def expand(self, pipeline):
        return (
            pipeline
            | "Partitions" >> beam.Create(self._patterns)
            | "ReadUris" >> beam.io.ReadAllFromParquet(columns=["uri"])
            | "Uri" >> beam.Map(lambda row: row["uri"])
        )
