"""After a run, from any runner's output (local or gs://): a text table, a PNG with the label
distribution and the top-1 score histogram, and an HTML page with both and thumbnails.

python -m pipeline.report ROOT [--date YYYY-MM-DD] [--out DIR] [--sample N]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.report_page import chart_png, format_html
from transforms import sink
from transforms.vocabulary import ERRORS, PREDICTIONS

PROG = "python -m pipeline.report"
DATE_IN_PATH = re.compile(r"/date=([^/]+)/[^/]+$")
TOP_LABELS = 20


def read_kind(root: str, kind: str, date: str | None, columns: list[str]) -> pa.Table:
    """The kind's finished files for one date or all, with a 'date' column from the path."""
    pattern = sink.part_files(root, kind, date or "*")
    tables = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(meta.path) as f:
            table = pq.read_table(f, columns=columns)
        day = DATE_IN_PATH.search(meta.path)[1]
        tables.append(table.append_column("date", pa.array([day] * table.num_rows)))
    if not tables:
        return pa.table({c: [] for c in [*columns, "date"]})
    return pa.concat_tables(tables)


@dataclasses.dataclass
class Report:
    per_date: list[tuple[str, int, int]]  # date, labelled, failed
    top_labels: list[tuple[str, int, float]]  # label, images with it top-1, mean top-1 score
    reasons: list[tuple[str, str, int, str]]  # stage, reason, count, example uri
    top1_scores: list[float]
    sample: list[dict]  # uri, labels, scores (top-3)


def build_report(predictions: pa.Table, errors: pa.Table, sample_size: int) -> Report:
    """Pure: the output's columns (uri, labels, scores, date / uri, stage, reason, date) ->
    every number the report shows, computed in Arrow so millions of rows stay cheap."""
    labelled = count_by(predictions, ["date"])
    failed = count_by(errors, ["date"])
    dates = sorted({d for (d,) in labelled} | {d for (d,) in failed})
    per_date = [(d, labelled.get((d,), 0), failed.get((d,), 0)) for d in dates]

    top1 = pa.table(
        {
            "label": pc.list_element(predictions["labels"], 0),
            "score": pc.list_element(predictions["scores"], 0),
        }
    )
    by_label = top1.group_by("label").aggregate([("score", "count"), ("score", "mean")])
    ranked = sorted(
        tuples(by_label, ["label", "score_count", "score_mean"]), key=lambda r: (-r[1], r[0])
    )
    by_reason = errors.group_by(["stage", "reason"]).aggregate([("uri", "count"), ("uri", "min")])
    reasons = sorted(
        tuples(by_reason, ["stage", "reason", "uri_count", "uri_min"]),
        key=lambda r: (-r[2], r[0], r[1]),
    )

    ordered = predictions.sort_by("uri")
    step = max(1, ordered.num_rows // sample_size) if sample_size else 0
    picked = ordered.take(list(range(0, ordered.num_rows, step))[:sample_size]) if step else None
    sample = [
        {"uri": r["uri"], "labels": r["labels"][:3], "scores": r["scores"][:3]}
        for r in (picked.to_pylist() if picked is not None else [])
    ]
    return Report(per_date, ranked[:TOP_LABELS], reasons, top1["score"].to_pylist(), sample)


def tuples(table: pa.Table, columns: list[str]) -> list[tuple]:
    return list(zip(*(table[c].to_pylist() for c in columns), strict=True))


def count_by(table: pa.Table, keys: list[str]) -> dict[tuple, int]:
    counted = table.group_by(keys).aggregate([([], "count_all")])
    return {row[:-1]: row[-1] for row in tuples(counted, [*keys, "count_all"])}


def format_text(report: Report) -> str:
    lines = [f"{'date':<10} {'labelled':>10} {'failed':>8}"]
    lines += [f"{d:<10} {n:>10,} {f:>8,}" for d, n, f in report.per_date]
    total_n = sum(n for _, n, _ in report.per_date)
    total_f = sum(f for _, _, f in report.per_date)
    lines += [f"{'total':<10} {total_n:>10,} {total_f:>8,}", ""]
    lines += [f"{f'top {TOP_LABELS} labels (top-1)':<32} {'images':>10} {'mean score':>11}"]
    lines += [f"{label[:32]:<32} {n:>10,} {mean:>11.3f}" for label, n, mean in report.top_labels]
    lines += ["", f"{'errors: stage/reason':<44} {'count':>7}  example"]
    lines += [
        f"{(stage + '/' + reason)[:44]:<44} {n:>7,}  {uri}"
        for stage, reason, n, uri in report.reasons
    ]
    if not report.reasons:
        lines.append("(none)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the --output ROOT of the runs (local or gs://)")
    parser.add_argument("--date", help="one partition date, YYYY-MM-DD (default: all)")
    parser.add_argument("--out", default="report", help="folder for report.png and report.html")
    parser.add_argument("--sample", type=int, default=24, help="thumbnails in the HTML page")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    predictions = read_kind(args.root, PREDICTIONS, args.date, ["uri", "labels", "scores"])
    errors = read_kind(args.root, ERRORS, args.date, ["uri", "stage", "reason"])
    if predictions.num_rows + errors.num_rows == 0:
        where = f"{args.root} (date {args.date})" if args.date else args.root
        print(f"{PROG}: error: no predictions or errors under {where}", file=sys.stderr)
        sys.exit(2)
    report = build_report(predictions, errors, args.sample)
    print(format_text(report))
    chart = chart_png(report)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.png"), "wb") as f:
        f.write(chart)
    with open(os.path.join(args.out, "report.html"), "w", encoding="utf-8") as f:
        f.write(format_html(report, chart, args.root))
    print(f"\nchart: {args.out}/report.png, page: {args.out}/report.html", file=sys.stderr)


if __name__ == "__main__":
    main()
