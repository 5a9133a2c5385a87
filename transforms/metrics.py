"""Counters every stage reports into, under one namespace (RunInference's own metrics too),
and their live mirror in this process for the progress line of in-process runs."""

import threading

from apache_beam.metrics import Metrics

from transforms.vocabulary import STAGES

NAMESPACE = "image_labeler"

REASON_PREFIX = "reason:"  # one counter per stage and reason: reason:<stage>:<reason>

images_queued = Metrics.counter(NAMESPACE, "images_queued")  # new URIs, after the skip
images_read = Metrics.counter(NAMESPACE, "images_read")
images_skipped = Metrics.counter(NAMESPACE, "images_skipped")  # already in the output
images_changed = Metrics.counter(NAMESPACE, "images_changed")  # labelled before, source changed
images_identical = Metrics.counter(NAMESPACE, "images_identical")  # served by another's read
images_labelled = Metrics.counter(NAMESPACE, "images_labelled")
failed = {stage: Metrics.counter(NAMESPACE, f"failed_{stage}") for stage in STAGES}


class LiveCounts:
    """Listed, queued, labelled and failed images of the runs in this process, readable while they
    run (Beam's DirectRunner offers no live metrics). Workers in other processes (Dataflow,
    Flink, multi-process DirectRunner) count only into the Beam metrics above."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = {"listed": 0, "queued": 0, "labelled": 0, "failed": 0}

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


LIVE = LiveCounts()


def count_listed() -> None:
    """An input found by a listing (gs:// listings are long: the progress line shows it)."""
    LIVE.add("listed")


def count_queued() -> None:
    images_queued.inc()
    LIVE.add("queued")


def count_labelled() -> None:
    images_labelled.inc()
    LIVE.add("labelled")


def count_failure(row: dict) -> None:
    """An error row -> its stage counter and its reason counter ('reason:<stage>:<reason>')."""
    failed[row["stage"]].inc()
    Metrics.counter(NAMESPACE, f"{REASON_PREFIX}{row['stage']}:{row['reason']}").inc()
    LIVE.add("failed")
