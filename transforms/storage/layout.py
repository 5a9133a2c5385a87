"""The output's layout under ROOT: the date partitions of each kind, their part files'
names and the run's temporary folders; the one home of which paths are a run's output."""

from __future__ import annotations

from apache_beam.io.filesystems import FileSystems

from transforms.storage.uris import glob_escape
from transforms.vocabulary import KINDS

TEMP_DIR = "_temp"  # '_' keeps pyarrow, Spark and BigQuery from reading it as data


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


def output_prefixes(root: str) -> tuple[str, ...]:
    """What a run writes under ROOT, as path prefixes (ROOT/predictions/, ROOT/errors/,
    ROOT/_temp/): files starting with one are this job's output, never its input."""
    base = root.rstrip("/")
    return tuple(FileSystems.join(base, name) + "/" for name in (*KINDS, TEMP_DIR))
