"""After the run: the counters of the metrics namespace -> the one-line summary."""

from __future__ import annotations

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from pipeline.config import Config
from transforms import sink
from transforms.metrics import NAMESPACE, REASON_PREFIX
from transforms.vocabulary import ERRORS, PREDICTIONS, STAGES


def counters(result: PipelineResult) -> dict[str, int]:
    """Committed counter values of the labeller's namespace, by name."""
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + (value or 0)
    return totals


def failure_breakdown(counts: dict[str, int]) -> str:
    """'decode: 2 empty file, 1 truncated; read: 1 NotFound' from the reason counters."""
    reasons = [
        (*name.removeprefix(REASON_PREFIX).split(":", 1), n)
        for name, n in counts.items()
        if name.startswith(REASON_PREFIX) and n
    ]
    by_stage: dict[str, list[str]] = {}
    for stage, reason, n in sorted(reasons, key=lambda r: (r[0], -r[2], r[1])):
        by_stage.setdefault(stage, []).append(f"{n} {reason}")
    return "; ".join(f"{stage}: {', '.join(parts)}" for stage, parts in by_stage.items())


def summarize(result: PipelineResult, config: Config, seconds: float) -> str:
    counts = counters(result)
    labelled = counts.get("images_labelled", 0)
    failed = sum(counts.get(f"failed_{s}", 0) for s in STAGES)
    detail = failure_breakdown(counts)
    skipped = counts.get("images_skipped", 0)
    rate = (labelled + failed) / seconds if seconds > 0 else 0.0
    return (
        f"labelled {labelled} of {counts.get('images_read', 0)} images, {failed} failed"
        f"{f' ({detail})' if detail else ''}"
        f"{f', {skipped} already in the output' if skipped else ''}"
        f" in {seconds:.1f} s ({rate:.1f} images/s); "
        f"predictions: {sink.partition_dir(config.output, PREDICTIONS, config.date)}, "
        f"errors: {sink.partition_dir(config.output, ERRORS, config.date)}"
    )
