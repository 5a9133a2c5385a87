"""The report's pictures: the chart (matplotlib PNG) and the self-contained HTML page with the
tables, the chart and thumbnails of a sample of labelled images (local paths or gs://)."""

from __future__ import annotations

import base64
import html
import io

from pipeline.report.data import Report
from transforms.printable import printable


def chart_png(report: Report) -> bytes:
    """Label distribution (top-1 counts) beside the histogram of top-1 scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (bars, hist) = plt.subplots(1, 2, figsize=(12, 5.5), layout="constrained")
    names = [printable(label) for label, _, _ in report.top_labels][::-1]
    rows = range(len(names))
    bars.barh(rows, [n for _, n, _ in report.top_labels][::-1], color="#4c72b0")
    # Class names are data: drawn literally, never as mathtext ('$x^2$') or LaTeX, control
    # characters as escapes.
    bars.set_yticks(rows, labels=names, parse_math=False, usetex=False)
    bars.set_title(f"Top {len(names)} labels (images with it as top-1)")
    bars.set_xlabel("images")
    bars.tick_params(axis="y", labelsize=8)
    bars.xaxis.set_major_locator(MaxNLocator(integer=True))
    hist.hist(report.top1_scores, bins=20, range=(0, 1), color="#55a868", edgecolor="white")
    hist.set_title("Top-1 score")
    hist.set_xlabel("softmax probability")
    hist.set_ylabel("images")
    hist.yaxis.set_major_locator(MaxNLocator(integer=True))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def thumbnail_uri(uri: str, size: int = 160) -> str | None:
    """A JPEG data: URI of the image (any Beam filesystem), or None if it cannot be read."""
    from transforms.feed import DEFAULT_MAX_OBJECT_BYTES as most
    from transforms.images import open_image, to_rgb
    from transforms.storage import bounded, local

    try:
        # The job's own bounded reads: a file swapped since for a FIFO or a huge one is refused.
        data = local.read_bounded(uri, most, bounded.ByteBudget(most))
        image = to_rgb(open_image(data))
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    except Exception:  # a vanished or unreadable image shows as missing
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def format_html(report: Report, chart: bytes, root: str) -> str:
    """The page; every text from the data (dates from folder names, labels, reasons, URIs,
    the root) is HTML-escaped, quotes included."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(d)}</td><td>{n:,}</td><td>{f:,}</td></tr>" for d, n, f in report.per_date
    )
    labels = "".join(
        f"<tr><td>{e(label)}</td><td>{n:,}</td><td>{mean:.3f}</td></tr>"
        for label, n, mean in report.top_labels
    )
    reasons = "".join(
        f"<tr><td>{e(stage)}</td><td>{e(reason)}</td><td>{n:,}</td><td>{e(uri)}</td></tr>"
        for stage, reason, n, uri in report.reasons
    )
    cards = []
    for item in report.sample:
        src = thumbnail_uri(item["uri"])
        picture = (
            f'<img class="thumb" src="{src}" alt="{e(item["uri"])}">'
            if src
            else '<div class="missing">image unavailable</div>'
        )
        top3 = "".join(
            f"<li>{e(label)} <span>{score:.3f}</span></li>"
            for label, score in zip(item["labels"], item["scores"], strict=True)
        )
        cards.append(
            f"<figure>{picture}<figcaption><ol>{top3}</ol>"
            f'<div class="uri">{e(item["uri"])}</div></figcaption></figure>'
        )
    chart_src = "data:image/png;base64," + base64.b64encode(chart).decode()
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Labelling report: {e(root)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ width: 180px; margin: 0; }}
.chart {{ max-width: 100%; }}
.thumb {{ max-width: 160px; max-height: 160px; display: block; }}
.missing {{ width: 160px; height: 120px; background: #eee; }}
figcaption ol {{ padding-left: 1.2em; margin: 0.3em 0; font-size: 0.85em; }}
.uri {{ font-size: 0.7em; color: #777; word-break: break-all; }}
</style></head><body>
<h1>Labelling report</h1><p>{e(root)}</p>
<h2>Images per date</h2>
<table><tr><th>date</th><th>labelled</th><th>failed</th></tr>{rows}</table>
<p>The latest row of each of {report.images:,} images; {report.rows:,} rows in all.</p>
<img class="chart" src="{chart_src}" alt="label distribution and top-1 score histogram">
<h2>Sample of labelled images</h2>
<div class="gallery">{"".join(cards)}</div>
<h2>Top labels</h2>
<table><tr><th>label (top-1)</th><th>images</th><th>mean score</th></tr>{labels}</table>
<h2>Errors</h2>
<table><tr><th>stage</th><th>reason</th><th>count</th><th>example</th></tr>{reasons}</table>
</body></html>
"""
