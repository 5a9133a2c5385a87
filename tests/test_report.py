"""python -m pipeline.report on a known output (numbers checked), its PNG, and its HTML page
opened in headless Chromium: no console errors, every thumbnail shown; local and gs://."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from pipeline.report import build_report
from tests.browser import Page
from tests.runs import ROOT
from transforms.rows import ERROR_SCHEMA, PREDICTION_SCHEMA, error_row, utc_now

# (date, top-1 label, top-1 score) per labelled image; errors as (date, stage, error).
LABELLED = [
    ("2025-07-01", "tabby cat", 0.9),
    ("2025-07-01", "tabby cat", 0.8),
    ("2025-07-01", "tabby cat", 0.7),
    ("2025-07-01", "beagle", 0.6),
    ("2025-07-01", "beagle", 0.4),
    ("2025-07-02", "tabby cat", 0.5),
    ("2025-07-02", "great grey owl", 0.3),
    ("2025-07-02", "great grey owl", 0.9),
]
FAILED = [
    ("2025-07-01", "decode", "empty file", "DecodeError: empty file (0 bytes)"),
    ("2025-07-01", "decode", "empty file", "DecodeError: empty file (0 bytes)"),
    ("2025-07-02", "read", "not found", "NotFound: 404 GET gs://b/x.jpg"),
]
EXPECTED_TEXT = """\
date         labelled   failed
2025-07-01          5        2
2025-07-02          3        1
total               8        3

top 20 labels (top-1)                images  mean score
tabby cat                                 4       0.725
beagle                                    2       0.500
great grey owl                            2       0.600

errors: stage/reason                           count  example
decode/empty file                                  2  {root}/bad/0.jpg
read/not found                                     1  {root}/bad/2.jpg"""


def write_known_output(root: str, image_uris: list[str]) -> None:
    """The output of imaginary runs: two dates, known labels and scores, three errors."""
    by_date: dict[tuple[str, str], list[dict]] = {}
    for uri, (date, label, score) in zip(image_uris, LABELLED, strict=True):
        by_date.setdefault(("predictions", date), []).append(
            {
                "uri": uri,
                "class_ids": [1, 2, 3],
                "labels": [label, "other", "another"],
                "scores": [score, (1 - score) / 2, (1 - score) / 4],
                "model": "test",
                "processed_at": utc_now(),
            }
        )
    for i, (date, stage, reason, error) in enumerate(FAILED):
        by_date.setdefault(("errors", date), []).append(
            error_row(f"{root}/bad/{i}.jpg", stage, reason, error)
        )
    for (kind, date), rows in by_date.items():
        schema = PREDICTION_SCHEMA if kind == "predictions" else ERROR_SCHEMA
        path = FileSystems.join(
            root, kind, f"date={date}", "part-20250701T000000-abcdef-00000-of-00001.parquet"
        )
        with FileSystems.create(path) as f:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), f)


def report_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.report", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(params=["local", "gcs"])
def known_output(request, tmp_path, image_dir):
    """(root, image URIs) of a known output on local disk or on the GCS emulator."""
    if request.param == "local":
        root, images = str(tmp_path / "out"), image_dir["good"][: len(LABELLED)]
    else:
        gcs_images = request.getfixturevalue("gcs_images")
        root, images = (
            gcs_images["root"].rsplit("/", 1)[0] + "/out",
            gcs_images["good"][: len(LABELLED)],
        )
    write_known_output(root, images)
    return root, images


def test_report_numbers_from_rows():
    predictions = [
        {"uri": f"u{i}", "date": d, "labels": [label, "x", "y"], "scores": [s, 0.1, 0.05]}
        for i, (d, label, s) in enumerate(LABELLED)
    ]
    errors = [
        error_row(f"e{i}", stage, reason, err) | {"date": d}
        for i, (d, stage, reason, err) in enumerate(FAILED)
    ]
    report = build_report(pa.Table.from_pylist(predictions), pa.Table.from_pylist(errors), 3)
    assert report.per_date == [("2025-07-01", 5, 2), ("2025-07-02", 3, 1)]
    assert [(label, n) for label, n, _ in report.top_labels] == [
        ("tabby cat", 4),
        ("beagle", 2),
        ("great grey owl", 2),
    ]
    np.testing.assert_allclose([m for _, _, m in report.top_labels], [0.725, 0.5, 0.6])
    assert report.reasons == [("decode", "empty file", 2, "e0"), ("read", "not found", 1, "e2")]
    assert sorted(report.top1_scores) == sorted(s for _, _, s in LABELLED)
    assert [item["uri"] for item in report.sample] == ["u0", "u2", "u4"]


def test_report_text_png_and_html_in_chromium(known_output, tmp_path):
    root, images = known_output
    out = tmp_path / "report"
    proc = report_cli(root, f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == EXPECTED_TEXT.format(root=root)

    chart = Image.open(out / "report.png")
    assert chart.format == "PNG" and chart.size[0] > 800 and chart.size[1] > 400
    pixels = np.asarray(chart.convert("RGB"))
    assert pixels.std() > 10  # bars and a histogram were drawn, not a blank canvas

    with Page() as page:
        page.load((out / "report.html").as_uri())
        loaded = page.evaluate(
            "Array.from(document.images).map(i => [i.className, i.complete && i.naturalWidth > 0])"
        )
        captions = page.evaluate(
            "Array.from(document.querySelectorAll('figure')).map(f => f.innerText)"
        )
        problems = page.problems
    assert problems == []
    assert loaded.count(["thumb", True]) == len(images) and ["chart", True] in loaded
    assert len(loaded) == len(images) + 1  # nothing else, nothing broken
    first = next(c for c in captions if images[0] in c)
    assert "tabby cat 0.900" in first  # the top-3 beside the thumbnail


def test_report_for_one_date(known_output, tmp_path):
    root, _ = known_output
    proc = report_cli(root, "--date=2025-07-02", f"--out={tmp_path / 'report'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1].split() == ["2025-07-02", "3", "1"] and lines[2].split() == ["total", "3", "1"]
    assert lines[5].split()[-2:] == ["2", "0.600"]  # great grey owl leads that day


def test_report_on_an_empty_root_says_so(tmp_path):
    proc = report_cli(str(tmp_path), f"--out={tmp_path / 'r'}")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("python -m pipeline.report: error: no predictions or errors under")
    )
