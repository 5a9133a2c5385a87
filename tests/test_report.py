"""python -m pipeline.report on a known output (numbers checked), its PNG, and its HTML page
opened in headless Chromium: no console errors, every thumbnail shown; local and gs://."""

import datetime as dt
import io
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from pipeline.report.cli import URI_WIDTH, shorten
from pipeline.report.data import build_report, latest_rows
from tests.browser import Page
from tests.runs import ROOT, cli, read_rows, report_cli
from tests.test_incremental import overwrite, write_photos
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
EXPECTED_TABLES = """\
date         labelled   failed
2025-07-01          5        2
2025-07-02          3        1
total               8        3
(the latest row of each of 11 images; 11 rows in all)

top 20 labels (top-1)                images  mean score
tabby cat                                 4       0.725
beagle                                    2       0.500
great grey owl                            2       0.600
"""
EXPECTED_ERRORS = """
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


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.slow)])
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
    at = utc_now()
    predictions = [
        {
            "uri": f"u{i}",
            "date": d,
            "labels": [label, "x", "y"],
            "scores": [s, 0.1, 0.05],
            "processed_at": at,
        }
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
    assert (report.images, report.rows) == (11, 11)


def test_the_report_counts_the_latest_row_of_each_uri():
    """An image labelled, changed and labelled again, then failing: its latest row counts,
    whatever kind; rows of equal processed_at are one each; every row is counted in all."""
    t = [dt.datetime(2026, 1, d, tzinfo=dt.UTC) for d in (1, 2, 3)]
    predictions = pa.Table.from_pylist(
        [
            {"uri": "a", "date": "d1", "labels": ["old"], "scores": [0.1], "processed_at": t[0]},
            {"uri": "b", "date": "d1", "labels": ["b"], "scores": [0.2], "processed_at": t[0]},
            {"uri": "a", "date": "d2", "labels": ["new"], "scores": [0.3], "processed_at": t[1]},
            {"uri": "c", "date": "d1", "labels": ["c"], "scores": [0.4], "processed_at": t[0]},
        ]
    )
    errors = pa.Table.from_pylist(
        [error_row("c", "decode", "corrupt image", "x") | {"date": "d3", "processed_at": t[2]}]
    )
    latest, failed = latest_rows(predictions, errors)
    assert latest["labels"].to_pylist() == [["b"], ["new"]]  # a's newest; c failed since
    assert failed["uri"].to_pylist() == ["c"]
    report = build_report(predictions, errors, 10)
    assert report.per_date == [("d1", 1, 0), ("d2", 1, 0), ("d3", 0, 1)]
    assert (report.images, report.rows) == (3, 5)
    assert [(label, n) for label, n, _ in report.top_labels] == [("b", 1), ("new", 1)]


@pytest.mark.slow
def test_report_text_png_and_html_in_chromium(known_output, tmp_path):
    root, images = known_output
    out = tmp_path / "report"
    proc = report_cli(root, f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables, rest = proc.stdout.split("\n\nimages (", 1)
    assert tables + "\n" == EXPECTED_TABLES
    listed, errors = rest.split("\n\n", 1)
    assert "\n" + errors.rstrip() == EXPECTED_ERRORS.format(root=root)
    # Each image (all 8: --sample 24), by URI, with its top-1 label and score.
    header, *lines = listed.splitlines()
    assert header.startswith("8 of 8)") and header.split()[-3:] == ["top-1", "label", "score"]
    top1 = sorted(zip(images, LABELLED, strict=True))
    assert [line.split() for line in lines] == [
        [shorten(uri, URI_WIDTH), *label.split(), f"{score:.3f}"] for uri, (_, label, score) in top1
    ]

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
    assert lines[6].split()[-2:] == ["2", "0.600"]  # great grey owl leads that day


def test_report_on_an_empty_root_says_so(tmp_path):
    proc = report_cli(str(tmp_path), f"--out={tmp_path / 'r'}")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("python -m pipeline.report: error: no predictions or errors under")
    )


# Text an attacker (or an unlucky user) can put in an output: a partition folder, file names,
# class names and reasons that are HTML, mathtext or terminal escape sequences.
PAYLOAD = "<img src=y onerror=alert(5)>"
HOSTILE_LABELS = ["$x^2$", r"$\notacommand$", "\x1b[2J\x1b[31mred", "<b>bold</b>"]


def write_hostile_output(root: str, image_dir: dict, tmp_path) -> list[str]:
    """A partition named date=PAYLOAD holding real images under hostile names."""
    images = []
    for i, name in enumerate([f"{PAYLOAD}.jpg", "\x1b]0;pwned\x07.jpg", "tab\there.jpg", "ok.jpg"]):
        path = tmp_path / "imgs" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(open(image_dir["good"][i], "rb").read())
        images.append(str(path))
    rows = [
        {
            "uri": uri,
            "class_ids": [1, 2, 3],
            "labels": [label, "x", "y"],
            "scores": [0.5, 0.3, 0.2],
            "model": "test",
            "processed_at": utc_now(),
        }
        for uri, label in zip(images, HOSTILE_LABELS, strict=True)
    ]
    errors = [error_row(f"/gone/{PAYLOAD}\x1b[2J.jpg", "read", "not\x1b[5m found", "x")]
    for kind, schema, table_rows in [
        ("predictions", PREDICTION_SCHEMA, rows),
        ("errors", ERROR_SCHEMA, errors),
    ]:
        path = FileSystems.join(root, kind, f"date={PAYLOAD}", "part-x-00000-of-00001.parquet")
        with FileSystems.create(path) as f:
            pq.write_table(pa.Table.from_pylist(table_rows, schema=schema), f)
    return images


def test_report_shows_hostile_text_literally_and_safely(image_dir, tmp_path):
    root, out = str(tmp_path / "out"), tmp_path / "report"
    images = write_hostile_output(root, image_dir, tmp_path)
    proc = report_cli(root, f"--out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]  # mathtext would have crashed the chart
    assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout
    assert "\\x1b[31mred" in proc.stdout and "not\\x1b[5m found" in proc.stdout
    assert Image.open(out / "report.png").format == "PNG"

    page = (out / "report.html").read_text(encoding="utf-8")
    assert PAYLOAD not in page and "<b>bold" not in page
    assert "&lt;img src=y onerror=alert(5)&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "$x^2$" in page
    with Page() as browser:
        browser.load((out / "report.html").as_uri())
        loaded = browser.evaluate(
            "Array.from(document.images).map(i => [i.className, i.complete && i.naturalWidth > 0])"
        )
        first_cell = browser.evaluate("document.querySelector('td').innerText")
        scripts = browser.evaluate("document.scripts.length")
        problems = browser.problems
    assert problems == []  # an injected <img src=y> would fail to load and be reported
    assert sorted(loaded) == sorted([["chart", True]] + [["thumb", True]] * len(images))
    assert first_cell == PAYLOAD and scripts == 0


def test_report_chart_draws_class_names_literally():
    from pipeline.report.data import Report
    from pipeline.report.page import chart_png

    literal = Report([("d", 2, 0)], [(HOSTILE_LABELS[1], 2, 0.5)], [], [0.5, 0.5], [])
    assert Image.open(io.BytesIO(chart_png(literal))).format == "PNG"


def test_report_out_naming_a_file_is_one_line(image_dir, tmp_path):
    root = str(tmp_path / "out")
    write_known_output(root, image_dir["good"][: len(LABELLED)])
    taken = tmp_path / "report.txt"
    taken.write_text("not a folder")
    proc = report_cli(root, f"--out={taken}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"python -m pipeline.report: error: --out {taken} is a file; pass a folder for the report"
    ]
    assert taken.read_text() == "not a folder" and proc.stdout == ""


@pytest.mark.parametrize("content", [b"", b"uri\n/x/a.jpg\n"], ids=["empty", "not-parquet"])
def test_report_names_the_file_it_cannot_read(content, tmp_path, image_dir):
    root = str(tmp_path / "out")
    write_known_output(root, image_dir["good"][: len(LABELLED)])
    bad = tmp_path / "out" / "errors" / "date=2025-07-02" / "part-bad-00000-of-00001.parquet"
    bad.write_bytes(content)
    proc = report_cli(root, f"--out={tmp_path / 'report'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"python -m pipeline.report: error: {bad} is not a readable Parquet file ("
    )
    assert not (tmp_path / "report").exists()


def test_report_on_a_run_where_every_image_failed(tmp_path):
    root = tmp_path / "out"
    errors = [error_row(f"/gone/{i}.jpg", "read", "not found", "gone") for i in range(3)]
    path = root / "errors" / "date=2025-07-03" / "part-x-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(errors, schema=ERROR_SCHEMA), path)
    proc = report_cli(str(root), f"--out={tmp_path / 'report'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[1].split() == ["2025-07-03", "0", "3"]
    assert "read/not found" in proc.stdout and (tmp_path / "report" / "report.html").exists()


# --- The latest row of each URI: the report and the README's queries on a real output -----

SHOW_LATEST = """
import json
import pyarrow as _pa
_t = latest if isinstance(latest, _pa.Table) else latest.to_arrow()
_at = [round(t.timestamp(), 6) for t in _t["processed_at"].to_pylist()]
print(json.dumps(sorted(zip(_t["uri"].to_pylist(), _at))))
"""


def readme_queries() -> dict[str, str]:
    """The README's queries for the latest row per URI, by the library each imports first."""
    text = pathlib.Path(ROOT, "README.md").read_text(encoding="utf-8")
    section = re.search(r"### The latest row of each URI\n(.*?)\n## ", text, re.S)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return {block.split()[1]: block for block in blocks}


@pytest.mark.slow  # the real command, twice
def test_the_latest_row_per_uri_in_the_report_and_the_readme_queries(tmp_path, probe_model):
    photos, out = tmp_path / "photos", tmp_path / "out"
    write_photos(photos, range(3))
    for date in ("2026-11-01", "2026-11-02"):
        if date == "2026-11-02":
            overwrite(photos / "p001.jpg", 101)  # a second version of one photo
        proc = cli(
            f"--input={photos}/*.jpg",
            f"--output={out}",
            f"--model={probe_model}",
            "--image_size=32",
            f"--date={date}",
            "--quiet",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(str(out), "predictions")
    assert len(rows) == 4  # p001.jpg twice: one row a version
    latest: dict[str, float] = {}
    for row in rows:
        at = round(row["processed_at"].timestamp(), 6)
        latest[row["uri"]] = max(latest.get(row["uri"], at), at)
    assert len({row["processed_at"] for row in rows if row["uri"].endswith("p001.jpg")}) == 2

    report = report_cli(str(out), f"--out={tmp_path / 'report'}")
    assert report.returncode == 0, report.stderr[-3000:]
    lines = report.stdout.splitlines()
    assert [line.split() for line in lines[1:4]] == [
        ["2026-11-01", "2", "0"],  # p000 and p002; p001's row of that day is history
        ["2026-11-02", "1", "0"],
        ["total", "3", "0"],
    ]
    assert lines[4] == "(the latest row of each of 3 images; 4 rows in all)"

    queries = readme_queries()
    assert sorted(queries) == ["duckdb", "polars", "pyarrow"]
    for library, query in queries.items():
        proc = subprocess.run(
            [sys.executable, "-c", query + SHOW_LATEST],
            cwd=tmp_path,  # the README's queries read out/
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{library}: {proc.stderr[-3000:]}"
        assert [tuple(r) for r in json.loads(proc.stdout)] == sorted(latest.items()), library
