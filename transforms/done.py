"""What the output already holds and what a run must still label: the one home of
--skip_existing (its policy, the rows it reads, the verdict per URI and the join), as a pure
join that --plan and the run's driver call and as the Beam transform a single job uses."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms import metrics
from transforms.printable import error_line, printable
from transforms.rows import LABELLING, MODEL_VERSION, SOURCE_VERSION
from transforms.storage.layout import part_files
from transforms.storage.listing import Listed, Work, as_work, content_key
from transforms.supersede import replaced
from transforms.vocabulary import KINDS, RETRYABLE

# --- The policy ----------------------------------------------------------------------------

SKIP_ALL, SKIP_DATE, SKIP_NONE = "true", "date", "false"  # --skip_existing's values
ALL_DATES = "*"


@dataclasses.dataclass(frozen=True)
class SkipPolicy:
    """--skip_existing for one run. dates: the partitions whose rows count as done (ALL_DATES,
    the run's date, or None: none). any_version: a row counts whatever its versions."""

    dates: str | None
    any_version: bool = False


def skip_policy(skip_existing: str, date: str) -> SkipPolicy:
    """true: every date's rows, by version; date: the run's date's rows, any version; false:
    none."""
    if skip_existing == SKIP_NONE:
        return SkipPolicy(None)
    if skip_existing == SKIP_DATE:
        return SkipPolicy(date, any_version=True)
    return SkipPolicy(ALL_DATES)


# --- The rows the output holds -------------------------------------------------------------

REASON = "reason"  # an error row's (transforms/vocabulary.py); predictions have none
DONE_COLUMNS = ("uri", SOURCE_VERSION, MODEL_VERSION, LABELLING, REASON)
# A done row's (source_version, model_version[, labelling]): the labelling (which --top_k and
# class names a prediction kept) is None in error rows and rows from before it was recorded;
# the reason (read where a row has one, and as rows record it) is None in predictions.
Versions = tuple[str | None, ...]
ANY_VERSION: Versions = (None, None)


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


def holds_text(kind: pa.DataType) -> bool:
    """A column type that holds URIs: string, large_string or string_view (Polars, DuckDB
    and Spark rewrite files with these), plain or dictionary-encoded."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_string_view(kind)


def is_string_view(kind: pa.DataType) -> bool:
    return kind == pa.string_view()


def check_part_file(path: str) -> None:
    """Reads one partition file's footer: Parquet with a text 'uri' column (what a re-run
    reads to skip what is done; other columns, compression and row groups as any tool
    wrote them), else PartFileError naming it and the type found."""
    try:
        with FileSystems.open(path) as f:
            schema = pq.ParquetFile(f).schema_arrow
    except Exception as e:  # empty, not Parquet, truncated
        raise _unreadable(path, f"is not a readable Parquet file ({error_line(e)})") from None
    if "uri" not in schema.names:
        raise _unreadable(path, "has no 'uri' column")
    if not holds_text(schema.field("uri").type):
        raise _unreadable(path, f"has a 'uri' column of {schema.field('uri').type}, not text")


def done_files(root: str, dates: str | None) -> list[str]:
    """The finished part files of the dates' predictions and errors (ALL_DATES: every date's;
    None: none)."""
    if dates is None:
        return []
    return sorted(
        m.path
        for kind in KINDS
        for m in FileSystems.match([part_files(root, kind, dates)])[0].metadata_list
    )


def check_partitions(root: str, dates: str | None, threads: int = 16) -> None:
    """Every part file the run reads as done has a readable footer, so a broken file stops the
    run at start-up with one line naming it (PartFileError)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(check_part_file, done_files(root, dates)))


def done_rows(path: str, any_version: bool = False) -> Iterator[tuple[str, Versions]]:
    """(uri, (source_version, model_version, labelling, reason)) of each row of one part
    file, only those columns read (reason: an error row's, None in predictions); a file
    written before rows carried versions, or any_version, gives None for the versions: done
    whatever the version."""
    with FileSystems.open(path) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        wanted = ("uri", LABELLING, REASON) if any_version else DONE_COLUMNS
        columns = [c for c in wanted if c in names]
        table = parquet.read(columns=columns)
    uris = table.column("uri").to_pylist()
    missing = [None] * len(uris)
    versions = [
        table.column(c).to_pylist() if c in columns else missing
        for c in (SOURCE_VERSION, MODEL_VERSION, LABELLING, REASON)
    ]
    once: dict = {}  # a file holds one labelling or a few: one string for all its rows
    versions[2] = [once.setdefault(x, x) for x in versions[2]]
    versions[3] = [once.setdefault(x, x) for x in versions[3]]  # a few reasons, too
    yield from zip(uris, zip(*versions, strict=True), strict=True)


def existing(root: str, policy: SkipPolicy) -> dict[str, list[Versions]]:
    """What the output holds for the policy, by URI (in this process: --plan, the driver)."""
    found: dict[str, list[Versions]] = defaultdict(list)
    for path in done_files(root, policy.dates):
        for uri, versions in done_rows(path, policy.any_version):
            found[uri].append(versions)
    return found


# --- The verdict and the join --------------------------------------------------------------

NEW, CHANGED, DONE = "new", "changed", "done"
# A failure that may pass (vocabulary.RETRYABLE): tried again below --max_attempts error rows,
# final from there on.
RETRY, FINAL = "retry", "final"


def reason_of(row: Versions) -> str | None:
    """A done row's error reason; None for a prediction."""
    return row[3] if len(row) > 3 else None


def is_done_by(item: Listed, row: Versions, model_version: str) -> bool:
    """Whether a row of the output makes `item` done: the same source and model version (None,
    in rows written before rows carried versions, matches any)."""
    source, model = row[:2]
    return source in (None, item.version) and model in (None, model_version)


def verdict(
    item: Listed, done: Iterable[Versions], model_version: str, max_attempts: int = 1
) -> str:
    """Whether an input is to be labelled, from the rows the output already has for its URI.
    Of those that make it done (is_done_by): DONE when one is a prediction or an error a
    later run cannot cure; else (errors whose reason may pass, vocabulary.RETRYABLE) RETRY
    while there are fewer than max_attempts of them, FINAL from there on. With none: CHANGED
    when the same model labelled another version of it; else NEW."""
    rows = list(done)
    same = [row for row in rows if is_done_by(item, row, model_version)]
    if any(reason_of(row) not in RETRYABLE for row in same):
        return DONE
    if same:
        return RETRY if len(same) < max_attempts else FINAL
    return CHANGED if any(row[1] == model_version for row in rows) else NEW


def done_otherwise(
    item: Listed, done: Iterable[Versions], model_version: str, labelling: str | None
) -> bool:
    """Whether a DONE input's rows all kept other labels than the run would (another --top_k
    or labels file: their `labelling`); an error row, or one from before rows recorded it,
    is as good as any."""
    rows = [row for row in done if is_done_by(item, row, model_version)]
    recorded = {row[2] if len(row) > 2 else None for row in rows}
    return bool(rows) and labelling is not None and not recorded & {None, labelling}


def labelled_otherwise(n: int) -> str:
    """What --plan and the summary say of the done images whose rows kept other labels: the
    run leaves them as they are (README "Re-runs"), and how to label them with its own."""
    return (
        f"{n:,} of them with another --top_k or --labels_file, kept as they are: a new "
        "--output or --skip_existing=false labels them with this run's"
    )


def not_tried_again(n: int, max_attempts: int) -> str:
    """What --plan and the summary say of failures at --max_attempts: final now."""
    return (
        f"{n:,} failure{'s' * (n != 1)} not tried again: {max_attempts:,} attempt"
        f"{'s' * (max_attempts != 1)} made (--max_attempts)"
    )


@dataclasses.dataclass
class JoinCounts:
    listed: int = 0  # inputs listed, duplicates included
    distinct: int = 0  # distinct URIs
    done: int = 0  # already labelled (same source and model version)
    otherwise: int = 0  # of those, rows with other --top_k or labels (done_otherwise)
    final: int = 0  # of those, failures that may pass with --max_attempts rows: not tried again
    changed: int = 0  # labelled before by this model, source changed since
    to_label: int = 0  # distinct URIs to label
    to_read: int = 0  # work units: reads to make (identical content read once)
    retried: int = 0  # of to_label, failures that may pass, tried again (verdict RETRY)
    # Error rows a prediction has replaced, of any URI, left by a run that stopped before
    # removing them (transforms/supersede.py; with --skip_existing=date, versions unread, at
    # most that many).
    superseded: int = 0

    @property
    def identical(self) -> int:
        """Inputs to be served by another's read (identical content), if that read works."""
        return self.to_label - self.to_read


def join(
    wanted: Iterable[Listed],
    done: Mapping[str, Sequence[Versions]],
    model_version: str,
    emit: Callable[[Work], None],
    unique: bool = False,
    labelling: str | None = None,
    max_attempts: int = 1,
) -> JoinCounts:
    """Listed inputs and the output's rows -> the work units of what is still to label,
    given to `emit` (each wanted URI once, unless done; inputs of identical content in one
    unit), and the counts. `unique`: the inputs come from one listing, which names each URI
    once, so no set of seen URIs is kept. Inputs whose content key is their URI are emitted
    as they come; those a checksum may join are held until the listing ends. `labelling`:
    the run's (Config.labelling), to count the done inputs labelled otherwise.
    max_attempts: --max_attempts (verdict)."""
    counts = JoinCounts()
    seen: set[str] = set()
    by_content: dict[str, list[Listed]] = {}

    def add(work: Work) -> None:
        counts.to_label += len(work)
        counts.to_read += 1
        emit(work)

    for item in wanted:
        counts.listed += 1
        if not unique:
            if item.uri in seen:
                continue
            seen.add(item.uri)
        counts.distinct += 1
        rows = done.get(item.uri, ())
        found = verdict(item, rows, model_version, max_attempts)
        if found in (DONE, FINAL):
            counts.done += 1
            counts.final += found == FINAL
            counts.otherwise += done_otherwise(item, rows, model_version, labelling)
            continue
        counts.changed += found == CHANGED
        counts.retried += found == RETRY
        key = content_key(item)
        if key.startswith("uri:"):
            add((item,))
        else:
            by_content.setdefault(key, []).append(item)
    for items in by_content.values():
        add(as_work(items))
    counts.superseded = sum(superseded_rows(uri, rows) for uri, rows in done.items())
    return counts


def superseded_rows(uri: str, rows: Iterable[Versions]) -> int:
    """How many of one URI's error rows a prediction among its rows has replaced
    (supersede.replaced): a run that labels a failure tried again removes them after it
    commits, so any found here were left by a run that stopped first."""
    rows = list(rows)
    predicted = {uri: [row[:2] for row in rows if reason_of(row) is None]}
    if not predicted[uri]:
        return 0
    return sum(replaced((uri, *row[:2]), predicted) for row in rows if reason_of(row) is not None)


# --- The same join as Beam transforms (a single job: Dataflow, a submitted job) ------------


class ExistingRows(beam.PTransform):
    """(uri, Versions) of every row the policy counts as done; empty where there is none.
    The files are found at start-up and read in parallel."""

    def __init__(self, root: str, policy: SkipPolicy):
        super().__init__()
        self._files = done_files(root, policy.dates)
        self._any_version = policy.any_version

    def expand(self, pipeline):
        return (
            pipeline
            | "PartFiles" >> beam.Create(self._files)
            | "Spread" >> beam.Reshuffle()
            | "ReadDone" >> beam.FlatMap(done_rows, self._any_version)
        )


def new_items(
    grouped: tuple[str, dict[str, Iterable]],
    model_version: str,
    labelling: str | None = None,
    max_attempts: int = 1,
) -> Iterator[Listed]:
    """(uri, {"wanted": [Listed...], "done": [Versions...]}) -> the input once if wanted and
    not done (see verdict), counted; error rows found replaced are counted too."""
    uri, sides = grouped
    rows = list(sides["done"])
    stale = superseded_rows(uri, rows)
    if stale:
        metrics.rows_superseded.inc(stale)
    item = next(iter(sides["wanted"]), None)
    if item is None:
        return
    found = verdict(item, rows, model_version, max_attempts)
    if found == FINAL:
        metrics.images_final.inc()
    if found in (DONE, FINAL):
        metrics.images_skipped.inc()
        if done_otherwise(item, rows, model_version, labelling):
            metrics.images_otherwise.inc()
        return
    if found == CHANGED:
        metrics.images_changed.inc()
    if found == RETRY:
        metrics.images_retried.inc()
    metrics.count_queued()
    yield item


def to_work(key: str, items: Iterable[Listed]) -> Work:
    """The inputs of one content key -> one work unit (those served by another's read are
    counted when they are labelled: postprocess.ToPredictionRow)."""
    return as_work(items)


class KeepNew(beam.PTransform):
    """(wanted Listed inputs, done (uri, Versions)) -> work units: each wanted input once,
    unless it is done (see verdict), inputs of identical content together (content_key).

    One CoGroupByKey does both the de-duplication and the skip, on URIs and versions; one
    GroupByKey then joins identical content: decoded pixels never cross a shuffle.
    """

    def __init__(self, model_version: str, labelling: str | None = None, max_attempts: int = 1):
        super().__init__()
        self._model_version = model_version
        self._labelling = labelling
        self._judged_by = (model_version, labelling, max_attempts)  # new_items' arguments

    def expand(self, pcolls):
        wanted, done = pcolls
        return (
            {
                "wanted": wanted | "KeyWanted" >> beam.Map(lambda item: (item.uri, item)),
                "done": done,
            }
            | "ByUri" >> beam.CoGroupByKey()
            | "New" >> beam.FlatMap(new_items, *self._judged_by)
            | "KeyContent" >> beam.Map(lambda item: (content_key(item), item))
            | "ByContent" >> beam.GroupByKey()
            | "Work" >> beam.MapTuple(to_work)
        )
