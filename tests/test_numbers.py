"""One set of numbers (pipeline/numbers.py): durations as people read them, the same rate and
thousands separators in the progress line, the summary and --plan; without Beam."""

from types import SimpleNamespace

import pytest

from pipeline.numbers import duration, per_second, seconds_of
from pipeline.plan import Plan, format_plan
from pipeline.progress import format_progress
from pipeline.summary import summarize
from transforms import metrics
from transforms.done import JoinCounts


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0.0s"),
        (0.18, "0.2s"),
        (1.84, "1.8s"),
        (9.96, "10s"),  # rounds up into the next unit, never "10.0s"
        (41.4, "41s"),
        (59.6, "1m00s"),
        (72, "1m12s"),
        (3599.6, "1h00m"),
        (3 * 3600 + 5 * 60 + 12, "3h05m"),
        (1234 * 3600 + 300, "1,234h05m"),
        (-1, "0.0s"),
    ],
)
def test_durations_read_as_people_read_them(seconds, shown):
    assert duration(seconds) == shown
    assert abs(seconds_of(shown) - max(0, seconds)) <= 30  # read back to its rounding


def test_a_duration_is_read_back_and_other_text_is_refused():
    assert seconds_of("1m12s") == 72 and seconds_of("1.8s") == 1.8
    assert seconds_of("1,234h05m") == 1234 * 3600 + 300
    with pytest.raises(ValueError):
        seconds_of("12.3 s")


def test_the_progress_line_and_the_summary_give_the_same_rate():
    """The last progress line and the summary, at the same moment of a run, print the same
    images/s (done over the time since the start) and counts with thousands separators."""
    seconds, done = 11.6, 1_203
    progress = format_progress(
        {metrics.QUEUED: 1_203, metrics.LABELLED: 1_200, metrics.FAILED: 3}, seconds, 1.3
    )
    counts = {
        metrics.IMAGES_READ: 1_203,
        metrics.IMAGES_LABELLED: 1_200,
        metrics.failed_name("decode"): 3,
        metrics.reason_name("decode", "corrupt image"): 3,
        metrics.IMAGES_SKIPPED: 4_500,
    }
    config = SimpleNamespace(output="/o", date="2026-01-01")
    line = summarize(counts, {"predictions": 1_200, "errors": 3}, config, seconds, 2)
    rate = per_second(done, seconds)
    assert rate == "103.7 images/s"
    assert f", {rate} (12s)" in progress and f"({rate})" in line
    assert line.startswith(
        "labelled 1,200 of 1,203 images, 3 failed (decode: 3 corrupt image), "
        "4,500 already in the output in 12s (103.7 images/s); 2 portions committed;"
    )
    assert progress.startswith("labelling: 1,203 of 1,203 images (100.0%), 3 failed")


def test_the_plan_prints_durations_and_thousands():
    plan = Plan(
        counts=JoinCounts(listed=12_000, distinct=12_000, to_label=12_000, to_read=12_000),
        bytes_to_read=3 * 2**30,
        sampled=200,
        decode_wall_s=0.0153,
        decode_cpu_s=0.0045,
        model_s=0.0308,
    )
    config = SimpleNamespace(
        read_concurrency=32, batch_size=1024, portion_seconds=180, model_version="sha256:x"
    )
    text = format_plan(plan, config)
    assert "plan: inputs listed: 12,000 (12,000 distinct URIs)" in text
    assert "to read: 12,000 images, 3,072.0 MiB" in text
    assert "in batches of 1,024" in text
    # 12,000 reads: decode 3m04s of wall time here, the model 6m10s sets the projection.
    assert "plan: projected here: 6m10s; for the whole set: decode 54s of vCPU, model 6m10s" in (
        text
    )


def test_the_projection_counts_the_listing_and_the_model_s_load():
    """--plan projects what the run's summary times: the listing and the join, the model's
    load, then the slower of decoding and the model (they overlap)."""
    plan = Plan(
        counts=JoinCounts(to_label=1000, to_read=1000),
        decode_wall_s=0.002,
        model_s=0.001,
        listing_s=1.5,
        load_s=4.0,
    )
    assert plan.projected_s() == pytest.approx(1.5 + 4.0 + 1000 * 0.002)
    plan.job_s, plan.jobs = 0.8, 3  # a run in three portions: three jobs' own costs
    assert plan.projected_s() == pytest.approx(1.5 + 4.0 + 1000 * 0.002 + 3 * 0.8)
    plan.counts = JoinCounts()  # nothing to read: no model is loaded, no job runs
    assert plan.projected_s() == pytest.approx(1.5)
