"""Counters every stage reports into, under one namespace (RunInference's own metrics too),
named once here for whoever reads them, and their live mirror for in-process progress."""

import threading

from apache_beam.metrics import Metrics

from transforms.vocabulary import STAGES

NAMESPACE = "image_labeler"

# The counters' names: made here, and read by these names (pipeline/summary.py, flink.py).
IMAGES_QUEUED = "images_queued"  # new URIs, after the skip
IMAGES_READ = "images_read"
IMAGES_SKIPPED = "images_skipped"  # already in the output
IMAGES_CHANGED = "images_changed"  # labelled before, source changed
IMAGES_OTHERWISE = "images_labelled_otherwise"  # skipped, its rows of other top_k or labels
IMAGES_IDENTICAL = "images_identical"  # labelled from another input's read (same content)
IMAGES_LABELLED = "images_labelled"
IMAGES_RETRIED = "images_retried"  # failed before for a reason that may pass: tried again
IMAGES_FINAL = "images_not_retried"  # such failures at --max_attempts: skipped, final
ROWS_SUPERSEDED = "rows_superseded"  # error rows found replaced by a prediction (supersede.py)
REASON_PREFIX = "reason:"  # one counter per stage and reason: reason:<stage>:<reason>


def failed_name(stage: str) -> str:
    """The counter of images that became error rows at `stage`."""
    return f"failed_{stage}"


def reason_name(stage: str, reason: str) -> str:
    return f"{REASON_PREFIX}{stage}:{reason}"


def reason_of(name: str) -> tuple[str, str] | None:
    """(stage, reason) of a reason_name(), None for any other counter."""
    if not name.startswith(REASON_PREFIX):
        return None
    stage, _, reason = name.removeprefix(REASON_PREFIX).partition(":")
    return stage, reason


def failed_total(counts: dict[str, int]) -> int:
    """Images that became error rows, at any stage, from counter values by name."""
    return sum(counts.get(failed_name(stage), 0) for stage in STAGES)


images_queued = Metrics.counter(NAMESPACE, IMAGES_QUEUED)
images_read = Metrics.counter(NAMESPACE, IMAGES_READ)
images_skipped = Metrics.counter(NAMESPACE, IMAGES_SKIPPED)
images_changed = Metrics.counter(NAMESPACE, IMAGES_CHANGED)
images_otherwise = Metrics.counter(NAMESPACE, IMAGES_OTHERWISE)
images_identical = Metrics.counter(NAMESPACE, IMAGES_IDENTICAL)
images_labelled = Metrics.counter(NAMESPACE, IMAGES_LABELLED)
images_retried = Metrics.counter(NAMESPACE, IMAGES_RETRIED)
images_final = Metrics.counter(NAMESPACE, IMAGES_FINAL)
rows_superseded = Metrics.counter(NAMESPACE, ROWS_SUPERSEDED)
failed = {stage: Metrics.counter(NAMESPACE, failed_name(stage)) for stage in STAGES}

# LIVE's counts, by name (pipeline/progress.py reads them).
LISTED, QUEUED, LABELLED, FAILED = "listed", "queued", "labelled", "failed"


class LiveCounts:
    """Listed, queued, labelled and failed images of the runs in this process, readable while they
    run (Beam's DirectRunner offers no live metrics). Workers in other processes (Dataflow,
    Flink, multi-process DirectRunner) count only into the Beam metrics above."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((LISTED, QUEUED, LABELLED, FAILED), 0)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


LIVE = LiveCounts()


def count_listed() -> None:
    """An input found by a listing (gs:// listings are long: the progress line shows it)."""
    LIVE.add(LISTED)


def count_queued() -> None:
    images_queued.inc()
    LIVE.add(QUEUED)


def count_labelled() -> None:
    images_labelled.inc()
    LIVE.add(LABELLED)


def count_failure(row: dict) -> None:
    """An error row -> its stage counter and its reason counter ('reason:<stage>:<reason>')."""
    failed[row["stage"]].inc()
    Metrics.counter(NAMESPACE, reason_name(row["stage"], row["reason"])).inc()
    LIVE.add(FAILED)
