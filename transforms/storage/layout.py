"""The output's layout under ROOT: the date partitions of each kind, their part files'
names and the run's temporary folders; the one home of which paths are a run's output."""

from __future__ import annotations

import os

from apache_beam.io.filesystems import FileSystems

from transforms.printable import printable
from transforms.storage.uris import glob_escape, local_path
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


def folders_written(root: str, date: str) -> list[str]:
    """The folders a run writes into, outermost first: ROOT, each kind's folder and the date's
    partition in it, and _temp (the run's own folders in _temp are new names)."""
    base = root.rstrip("/")
    folders = [base]
    for kind in KINDS:
        folders += [FileSystems.join(base, kind), partition_dir(base, kind, date)]
    return [*folders, FileSystems.join(base, TEMP_DIR)]


def layout_fault(root: str, date: str, files: tuple[str, ...] = ()) -> str | None:
    """What in a local output's layout would stop the run where it writes, found before it
    starts: a file (or a dangling link, a FIFO...) where it writes a folder, at any level
    from ROOT's parents to the date's partitions; a folder where it writes one of `files`
    (the lease). None when there is none, and on object stores, where a name is never in
    the way of another (gs://out/predictions and gs://out/predictions/x are two objects)."""
    local = local_path(root)
    if local is None:
        return None
    above = os.path.dirname(local.rstrip("/"))
    while not os.path.lexists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        return f"{printable(above)} is {what_is(above)}, where the output needs a folder"
    for folder in folders_written(local, date):
        if os.path.lexists(folder) and not os.path.isdir(folder):
            return f"{printable(folder)} is {what_is(folder)}, where the run writes a folder"
    for path in files:
        if os.path.isdir(path):
            return f"{printable(path)} is a folder, where the run writes a file"
    return None


def what_is(path: str) -> str:
    """'a file', 'a dangling link' or 'not a folder' (a FIFO, a socket, a device)."""
    if os.path.isfile(path):
        return "a file"
    return "a dangling link" if os.path.islink(path) else "not a folder"
