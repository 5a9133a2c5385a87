"""The labeller's counters through a real DirectRunner job, read back by summary.counters under
the names transforms/metrics.py gives them: a counter renamed where it is made fails here."""

import apache_beam as beam

from pipeline import summary
from pipeline.exit_status import OK, OUTPUT_LOST, TOO_MANY_ERRORS
from transforms import metrics
from transforms.rows import error_row
from transforms.vocabulary import (
    DECODE,
    EMPTY,
    ERRORS,
    INFERENCE,
    MODEL_FAILED,
    NOT_FOUND,
    PREDICTIONS,
    READ,
)


def count(event: str) -> None:
    """One image's counts, as the stages make them (transforms/inputs, feed, postprocess)."""
    if event == "skipped":
        metrics.images_skipped.inc()
        return
    if event == "changed":
        metrics.images_changed.inc()
    metrics.count_queued()
    if event == "identical":
        metrics.images_identical.inc()
        return
    if event == "not found":
        metrics.count_failure(error_row("/x.jpg", READ, NOT_FOUND, "gone"))
        return
    metrics.images_read.inc()
    if event == "empty":
        metrics.count_failure(error_row("/x.jpg", DECODE, EMPTY, "0 bytes"))
    elif event == "model failed":
        metrics.count_failure(error_row("/x.jpg", INFERENCE, MODEL_FAILED, "boom"))
    else:
        metrics.count_labelled()


EVENTS = ["labelled", "labelled", "changed", "skipped", "identical", "not found", "empty"]


def run_counts(events: list[str]) -> dict[str, int]:
    """The counters of a DirectRunner job that counts `events`, as the summary reads them."""
    pipeline = beam.Pipeline(runner="DirectRunner")
    _ = pipeline | beam.Create(events) | beam.Map(count)
    result = pipeline.run()
    result.wait_until_finish()
    return summary.counters(result)


def test_counters_are_read_back_by_their_names():
    metrics.LIVE.reset()
    counts = run_counts([*EVENTS, "model failed"])
    assert counts == {
        metrics.IMAGES_QUEUED: 7,
        metrics.IMAGES_READ: 5,
        metrics.IMAGES_SKIPPED: 1,
        metrics.IMAGES_CHANGED: 1,
        metrics.IMAGES_IDENTICAL: 1,
        metrics.IMAGES_LABELLED: 3,
        metrics.failed_name(READ): 1,
        metrics.failed_name(DECODE): 1,
        metrics.failed_name(INFERENCE): 1,
        metrics.reason_name(READ, NOT_FOUND): 1,
        metrics.reason_name(DECODE, EMPTY): 1,
        metrics.reason_name(INFERENCE, MODEL_FAILED): 1,
    }
    assert metrics.failed_total(counts) == 3
    assert summary.failure_breakdown(counts) == (
        "decode: 1 empty file; inference: 1 model failed; read: 1 not found"
    )
    # The in-process mirror the progress line reads.
    assert metrics.LIVE.snapshot() == {
        metrics.LISTED: 0,
        metrics.QUEUED: 7,
        metrics.LABELLED: 3,
        metrics.FAILED: 3,
    }


def test_the_exit_status_follows_the_counters():
    counts = run_counts(EVENTS)  # 3 labelled, 2 failed
    written = {PREDICTIONS: 3, ERRORS: 2}
    assert summary.outcome(counts, written, max_error_ratio=0.5) == (OK, None)
    status, why = summary.outcome(counts, written, max_error_ratio=0.2)
    assert status == TOO_MANY_ERRORS and why.startswith("2 of 5 images failed (40%)")
    status, why = summary.outcome(counts, {PREDICTIONS: 2, ERRORS: 2}, max_error_ratio=1)
    assert status == OUTPUT_LOST and why.startswith("1 predictions rows of this run")
