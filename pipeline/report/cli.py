"""Report on a run's output (local or gs://, any runner): text tables on stdout (counts per
date, top labels, a sample of images with their top-1 label and score, errors), and report.png
and report.html under --out; the numbers come from data.py, the pictures from page.py.

python -m pipeline.report ROOT [--date YYYY-MM-DD] [--out DIR] [--sample N]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pipeline.report.data import TOP_LABELS, Report, build_report, read_output
from pipeline.report.page import chart_png, format_html
from transforms.done import PartFileError
from transforms.printable import printable

PROG = "python -m pipeline.report"


class ReportError(Exception):
    """A reason the report cannot be made: one line, exit status 2."""


MAX_SAMPLE = 1000  # thumbnails: each is an image read and embedded in the page
URI_WIDTH = 100  # characters of a URI in the terminal tables (an image's, an example's)
LABEL_WIDTH = 32


def shorten(text: str, width: int) -> str:
    """`text` if it fits in `width` characters, else its start and end around a '…', so a
    long URI keeps its bucket or folder and its file name and the table stays one line a row."""
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def format_text(report: Report) -> str:
    """The tables for a terminal; text from the data passes through printable(), so a file
    name or label cannot move the cursor, clear the screen or reorder the line."""
    p = printable
    lines = [f"{'date':<10} {'labelled':>10} {'failed':>8}"]
    lines += [f"{shorten(p(d), 10):<10} {n:>10,} {f:>8,}" for d, n, f in report.per_date]
    total_n = sum(n for _, n, _ in report.per_date)
    total_f = sum(f for _, _, f in report.per_date)
    lines += [
        f"{'total':<10} {total_n:>10,} {total_f:>8,}",
        f"(the latest row of each of {report.images:,} images; {report.rows:,} rows in all)",
        "",
    ]
    lines += [f"{f'top {TOP_LABELS} labels (top-1)':<32} {'images':>10} {'mean score':>11}"]
    lines += [
        f"{shorten(p(label), 32):<32} {n:>10,} {mean:>11.3f}"
        for label, n, mean in report.top_labels
    ]
    lines += ["", *image_lines(report, total_n)]
    lines += ["", f"{'errors: stage/reason':<44} {'count':>7}  example"]
    lines += [
        f"{shorten(p(stage + '/' + reason), 44):<44} {n:>7,}  {shorten(p(uri), URI_WIDTH)}"
        for stage, reason, n, uri in report.reasons
    ]
    if not report.reasons:
        lines.append("(none)")
    return "\n".join(lines)


def image_lines(report: Report, labelled: int) -> list[str]:
    """The sampled images (--sample, evenly by URI), each with its top-1 label and score."""
    title = f"images ({len(report.sample):,} of {labelled:,})"
    uris = [printable(item["uri"]) for item in report.sample]
    width = min(URI_WIDTH, max([len(title), *map(len, uris)]))
    lines = [f"{title:<{width}}  {'top-1 label':<{LABEL_WIDTH}} {'score':>6}"]
    for uri, item in zip(uris, report.sample, strict=True):
        label = shorten(printable(item["labels"][0]), LABEL_WIDTH) if item["labels"] else ""
        score = f"{item['scores'][0]:.3f}" if item["scores"] else ""
        lines.append(f"{shorten(uri, width):<{width}}  {label:<{LABEL_WIDTH}} {score:>6}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the --output ROOT of the runs (local or gs://)")
    parser.add_argument("--date", help="one partition date, YYYY-MM-DD (default: all)")
    parser.add_argument("--out", default="report", help="folder for report.png and report.html")
    parser.add_argument(
        "--sample",
        type=int,
        default=24,
        help=f"images listed with their top-1 label and shown as thumbnails in the HTML page, "
        f"1 to {MAX_SAMPLE} (default %(default)s)",
    )
    return parser.parse_args(argv)


def check_out(out: str) -> None:
    """--out must be a folder or not exist yet (checked before any work)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ReportError(f"--out {printable(out)} is a file; pass a folder for the report")


def write_files(out: str, chart: bytes, page: str) -> None:
    try:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "report.png"), "wb") as f:
            f.write(chart)
        with open(os.path.join(out, "report.html"), "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as e:
        raise ReportError(f"--out {printable(out)} cannot be written to ({e.strerror})") from e


def check_sample(sample: int) -> None:
    if not 1 <= sample <= MAX_SAMPLE:
        raise ReportError(f"--sample must be between 1 and {MAX_SAMPLE} thumbnails, not {sample}")


def make_report(args: argparse.Namespace) -> None:
    check_sample(args.sample)
    check_out(args.out)
    try:
        predictions, errors = read_output(args.root, args.date)
    except PartFileError as e:
        raise ReportError(str(e)) from None
    if predictions.num_rows + errors.num_rows == 0:
        where = f"{args.root} (date {args.date})" if args.date else args.root
        raise ReportError(f"no predictions or errors under {printable(where)}")
    report = build_report(predictions, errors, args.sample)
    print(format_text(report))
    chart = chart_png(report)
    write_files(args.out, chart, format_html(report, chart, args.root))
    out = printable(args.out)
    print(f"\nchart: {out}/report.png, page: {out}/report.html", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    status = 0
    try:
        make_report(parse_args(argv))
    except ReportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        status = 2
    sys.stdout.flush()
    sys.stderr.flush()
    # The files are written and closed: end here, as pipeline.run does, without tearing the
    # interpreter down. Under a loaded test machine that teardown once aborted (SIGABRT,
    # "terminate called ...") in a native library after the one-line error was printed.
    os._exit(status)


if __name__ == "__main__":
    main()
