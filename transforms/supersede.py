"""One current row per image: after a run has committed, the error rows that a prediction of
the same (URI, source version, model version) has replaced leave the error partitions (README
"Re-runs and resuming"). A failure tried again (transforms/done.py) that succeeds leaves its
earlier error rows behind; this removes them, file by file. Each error part file holding such
rows is written again without them under ROOT/_temp/<run id>-supersede/, then put in the
original's place in one step (locally a rename over it; on gs:// a copy onto its name, a new
generation of the object, atomic per object), or deleted when no row is left. A partition
holds whole files only, at every moment; a crash part-way leaves some files rewritten and
others not, and the next run that finds replaced rows (JoinCounts.superseded) finishes the
work. pipeline/run.py calls it under the run's lease, for the dates the lease covers."""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.output import delete_exactly
from transforms.rows import MODEL_VERSION, SOURCE_VERSION
from transforms.storage.layout import TEMP_DIR, part_files
from transforms.storage.uris import local_path
from transforms.vocabulary import ERRORS, PREDICTIONS

Key = tuple[str, str | None, str | None]  # a row's (uri, source_version, model_version)
Versions = tuple[str | None, str | None]
TEMP_SUFFIX = "supersede"  # ROOT/_temp/<run id>-supersede/: the rewritten files, staged


def same(a: str | None, b: str | None) -> bool:
    """Versions that name the same content; one a row lacks (written before rows carried
    versions) matches any, as in done.verdict."""
    return a is None or b is None or a == b


def replaced(error: Key, predicted: Mapping[str, Iterable[Versions]]) -> bool:
    """Whether an error row is replaced: a prediction of its URI has the same source and
    model version (same)."""
    uri, source, model = error
    return any(same(source, s) and same(model, m) for s, m in predicted.get(uri, ()))


def kept(errors: list[Key], predicted: Mapping[str, Iterable[Versions]]) -> list[bool]:
    """For one error file's rows, in order: whether each stays (is not replaced)."""
    return [not replaced(row, predicted) for row in errors]


def read_keys(path: str) -> list[Key]:
    """(uri, source_version, model_version) of each row of one part file, only those columns
    read (None where the file has no such column: written before rows carried versions)."""
    with FileSystems.open(path) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        columns = [c for c in ("uri", SOURCE_VERSION, MODEL_VERSION) if c in names]
        table = parquet.read(columns=columns)
    found = {c: table.column(c).to_pylist() for c in columns}
    missing = [None] * table.num_rows
    return list(
        zip(
            found["uri"],
            found.get(SOURCE_VERSION, missing),
            found.get(MODEL_VERSION, missing),
            strict=True,
        )
    )


def part_paths(root: str, kind: str, dates: str) -> list[str]:
    matched = FileSystems.match([part_files(root, kind, dates)])[0].metadata_list
    return sorted(m.path for m in matched)


@dataclasses.dataclass
class Removed:
    rows: int = 0  # error rows removed
    rewritten: int = 0  # files written again without them
    deleted: int = 0  # files that held nothing else


def stage_path(root: str, run_id: str, path: str) -> str:
    """Where the rewritten copy of `path` (ROOT/errors/date=D/part-...) is staged:
    ROOT/_temp/<run id>-supersede/date=D/part-..."""
    partition, name = path.rstrip("/").rsplit("/", 2)[-2:]
    return FileSystems.join(root.rstrip("/"), TEMP_DIR, f"{run_id}-{TEMP_SUFFIX}", partition, name)


def replace_file(staged: str, path: str) -> None:
    """`staged` takes `path`'s place in one step: a rename over it locally (same file system:
    both under ROOT); on object stores a copy onto its name (a new version of the object,
    never a partial one), then the staged copy goes."""
    staged_local, local = local_path(staged), local_path(path)
    if staged_local is not None and local is not None:
        os.replace(staged_local, local)
    else:
        FileSystems.rename([staged], [path])


def rewrite(path: str, keep: list[bool], staged: str) -> int:
    """One error file without the rows `keep` says go: deleted when none stays, else written
    to `staged` (all its columns, as found) and put in its place. Returns the rows removed."""
    with FileSystems.open(path) as f:
        table = pq.read_table(f)
    if table.num_rows != len(keep):  # rewritten since it was read: left to the next run
        return 0
    remaining = table.filter(pa.array(keep, pa.bool_()))
    if remaining.num_rows == 0:
        delete_exactly([path])
    else:
        with FileSystems.create(staged) as f:
            pq.write_table(remaining, f, compression="snappy")
        replace_file(staged, path)
    return table.num_rows - remaining.num_rows


def remove_replaced(root: str, dates: str, run_id: str, threads: int = 16) -> Removed:
    """Removes, from the error partitions of `dates` (a date, or "*": every date's), each row
    a prediction of the same dates has replaced. Reads the errors' keys first, then only the
    predictions of the URIs that failed; rewrites only the files holding replaced rows."""
    removed = Removed()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        error_paths = part_paths(root, ERRORS, dates)
        errors = dict(zip(error_paths, pool.map(read_keys, error_paths), strict=True))
        failed = {uri for keys in errors.values() for uri, _, _ in keys}
        if not failed:
            return removed
        predicted: dict[str, list[Versions]] = defaultdict(list)
        prediction_paths = part_paths(root, PREDICTIONS, dates)
        for keys in pool.map(read_keys, prediction_paths):
            for uri, source, model in keys:
                if uri in failed:
                    predicted[uri].append((source, model))
    if not predicted:
        return removed
    for path, keys in errors.items():
        keep = kept(keys, predicted)
        if all(keep):
            continue
        n = rewrite(path, keep, stage_path(root, run_id, path))
        removed.rows += n
        removed.deleted += n == len(keep)
        removed.rewritten += 0 < n < len(keep)
    staging = FileSystems.join(root.rstrip("/"), TEMP_DIR, f"{run_id}-{TEMP_SUFFIX}")
    if FileSystems.exists(staging):  # a local folder, empty by now; object stores have none
        delete_exactly([staging])
    return removed
