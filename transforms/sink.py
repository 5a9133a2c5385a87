"""Stage 5: rows -> Parquet under ROOT/<kind>/date=YYYY-MM-DD/ (Hive partitioning)."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

PREDICTIONS = "predictions"
ERRORS = "errors"


def partition_dir(root: str, kind: str, date: str) -> str:
    return FileSystems.join(root.rstrip("/"), kind, f"date={date}")


class WritePartition(beam.PTransform):
    """Writes one run's rows as part-<run_id>-SSSSS-of-NNNNN.parquet in the date partition.

    Beam's file sink writes to a temporary folder and renames only finished shards, so a
    partition holds whole files of complete runs; run_id keeps runs from overwriting
    each other.
    """

    def __init__(self, root: str, kind: str, date: str, run_id: str, schema: pa.Schema):
        super().__init__()
        self._prefix = FileSystems.join(partition_dir(root, kind, date), f"part-{run_id}")
        self._schema = schema

    def expand(self, rows):
        return rows | beam.io.WriteToParquet(
            self._prefix,
            schema=self._schema,
            codec="snappy",
            file_name_suffix=".parquet",
        )
