"""After the run: the counters of the metrics namespace and the rows committed to the
partitions -> the one-line summary and the exit status."""

from __future__ import annotations

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from pipeline.config import Config
from pipeline.exit_status import OK, OUTPUT_LOST, TOO_MANY_ERRORS
from pipeline.numbers import duration, per_second
from transforms.done import labelled_otherwise, not_tried_again
from transforms.metrics import (
    IMAGES_CHANGED,
    IMAGES_FINAL,
    IMAGES_IDENTICAL,
    IMAGES_LABELLED,
    IMAGES_OTHERWISE,
    IMAGES_READ,
    IMAGES_RETRIED,
    IMAGES_SKIPPED,
    NAMESPACE,
    failed_total,
    reason_of,
)
from transforms.storage.layout import partition_dir
from transforms.vocabulary import ERRORS, PREDICTIONS


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
    named = ((reason_of(name), n) for name, n in counts.items() if n)
    reasons = [(*which, n) for which, n in named if which]
    by_stage: dict[str, list[str]] = {}
    for stage, reason, n in sorted(reasons, key=lambda r: (r[0], -r[2], r[1])):
        by_stage.setdefault(stage, []).append(f"{n:,} {reason}")
    return "; ".join(f"{stage}: {', '.join(parts)}" for stage, parts in by_stage.items())


def summarize(
    counts: dict[str, int],
    written: dict[str, int],
    config: Config,
    seconds: float,
    portions: int | None = None,
) -> str:
    """The one-line summary. 'labelled' counts the prediction rows found in the partition,
    so nothing is reported as labelled that was not written; `portions`: how many a run in
    portions committed (None: one job)."""
    labelled = written.get(PREDICTIONS, 0)
    failed = failed_total(counts)
    lost = counts.get(IMAGES_LABELLED, 0) - labelled
    detail = failure_breakdown(counts)
    skipped = counts.get(IMAGES_SKIPPED, 0)
    changed = counts.get(IMAGES_CHANGED, 0)
    identical = counts.get(IMAGES_IDENTICAL, 0)
    otherwise = counts.get(IMAGES_OTHERWISE, 0)
    retried, final = counts.get(IMAGES_RETRIED, 0), counts.get(IMAGES_FINAL, 0)
    return (
        f"labelled {labelled:,} of {counts.get(IMAGES_READ, 0):,} images"
        f"{f' ({lost:,} more labelled but not written)' if lost > 0 else ''}, {failed:,} failed"
        f"{f' ({detail})' if detail else ''}"
        f"{f', {skipped:,} already in the output' if skipped else ''}"
        f"{f' ({labelled_otherwise(otherwise)})' if otherwise else ''}"
        f"{f', {changed:,} changed since labelled' if changed else ''}"
        f"{f', {retried:,} failed before, tried again' if retried else ''}"
        f"{f', {not_tried_again(final, config.max_attempts)}' if final else ''}"
        f"{f', {identical:,} served by an identical image' if identical else ''}"
        f" in {duration(seconds)} ({per_second(labelled + failed, seconds)}); "
        f"{f'{portions:,} portion{plural(portions)} committed; ' if portions is not None else ''}"
        f"{written_to(written, config)}"
    )


def written_to(written: dict[str, int], config: Config) -> str:
    """'predictions: ROOT/predictions/date=D, errors: ...': the partitions this run wrote
    rows to, so only folders that exist are named; 'nothing written' when it wrote none."""
    kinds = [kind for kind in (PREDICTIONS, ERRORS) if written.get(kind, 0) > 0]
    if not kinds:
        return "nothing written"
    return ", ".join(f"{kind}: {partition_dir(config.output, kind, config.date)}" for kind in kinds)


def outcome(counts: dict[str, int], written: dict[str, int], max_error_ratio: float):
    """(exit status, a line saying why it is not 0, or None) from the run's counters and
    the rows found in its partitions. Lost output outranks failed images."""
    labelled = counts.get(IMAGES_LABELLED, 0)
    failed = failed_total(counts)
    missing = {
        kind: n - written.get(kind, 0)
        for kind, n in ((PREDICTIONS, labelled), (ERRORS, failed))
        if n > written.get(kind, 0)
    }
    if missing:
        what = " and ".join(f"{n:,} {kind} rows" for kind, n in missing.items())
        return OUTPUT_LOST, (
            f"{what} of this run were not written to their partitions; "
            "re-running the same command labels those images again"
        )
    total = labelled + failed
    if total and (failed == total or failed / total > max_error_ratio):
        return TOO_MANY_ERRORS, error_ratio_line(failed, total, max_error_ratio)
    return OK, None


def error_ratio_line(failed: int, total: int, max_error_ratio: float) -> str:
    """Why a run's failures give exit status 3, true at every --max_error_ratio: the share
    with as many decimals as tell it from the bound; a run where every image failed, which
    fails even at a bound of 1, says so."""
    share = failed / total
    if share <= max_error_ratio:  # all failed, and the bound lets all fail
        return (
            f"{failed:,} of {total:,} images failed (100%): a run where every image failed fails "
            f"whatever --max_error_ratio says (it is {exact(max_error_ratio)}); "
            "the error rows say why"
        )
    return (
        f"{failed:,} of {total:,} images failed ({above(share, max_error_ratio)}), more than "
        f"--max_error_ratio {exact(max_error_ratio)} allows; the error rows say why"
    )


def exact(ratio: float) -> str:
    """The ratio as given (0.05, 1), never rounded to look like another."""
    short = f"{ratio:g}"
    return short if float(short) == ratio else repr(ratio)


def above(share: float, bound: float) -> str:
    """`share` (> bound) as a percentage with the fewest decimals that show it above the
    bound ("5.1%" of a 0.05 bound, not "5%")."""
    for decimals in range(10):
        if round(share * 100, decimals) > round(bound * 100, decimals):
            return f"{share:.{decimals}%}"
    return f"{share:.10%}"


def plural(n: int) -> str:
    return "" if n == 1 else "s"
