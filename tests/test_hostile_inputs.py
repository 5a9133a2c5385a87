"""Hostile inputs, each a real file or a real run of the CLI: names with spaces, backslashes,
'#', '%' and non-ASCII, file:// URIs, BOM manifests, the output inside the input folder, and
folders, broken manifests or broken partition files as one-line start-up errors."""

from __future__ import annotations

import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.runs import ROOT, cli, output_files, read_rows
from transforms.done import SKIP_DATE, PartFileError, check_partitions, existing, skip_policy
from transforms.inputs import glob_regex, match_pattern
from transforms.manifests import (
    InputError,
    check_manifest,
    manifest_uris,
    text_line,
    uris_from_text,
)
from transforms.printable import printable
from transforms.rows import ERROR_SCHEMA, PREDICTION_SCHEMA, error_row
from transforms.storage.uris import normalize_uri

# Legal POSIX names a glob must list and the job must label under their own names.
NAMES = ["x.jpg", "x.jpg ", " lead.jpg", "back\\slash.jpg", "a b#c%20.jpg", "ünï cödé 猫.jpg"]
DATE = "2025-03-04"


def write_images(folder: pathlib.Path, names: list[str], jpeg: bytes) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(jpeg)
    return [str(folder / name) for name in names]


def label(inputs: list[str], out: pathlib.Path, model: str, *extra: str):
    return cli(
        *inputs, f"--output={out}", f"--model={model}", "--image_size=32", f"--date={DATE}", *extra
    )


def labelled_once(out: pathlib.Path) -> tuple[list[str], list[str]]:
    """(predicted URIs, failed URIs), sorted, after checking no URI is in the output twice."""
    predicted = sorted(r["uri"] for r in read_rows(str(out), "predictions"))
    failed = sorted(r["uri"] for r in read_rows(str(out), "errors"))
    every = predicted + failed
    assert len(every) == len(set(every)), "a URI is in the output twice"
    return predicted, failed


def start_up_error(proc) -> str:
    """The one line a user mistake gives: exit status 2, nothing else on stderr."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("python -m pipeline.run: error: ")
    return lines[0]


# --- URIs, patterns and manifest lines, without Beam ---------------------------------------


@pytest.mark.parametrize(
    "given,expected",
    [
        ("/d/x.jpg ", "/d/x.jpg "),  # whitespace is part of the name
        (" /d/x.jpg", os.path.abspath(" /d/x.jpg")),  # a relative name starting with a space
        ("/d/a//b/../c.jpg", "/d/a/c.jpg"),  # absolute and lexically normalised
        ("file:///d/a%20b%23c%2520.jpg", "/d/a b#c%20.jpg"),
        ("file://localhost/d/%C3%A9.jpg", "/d/é.jpg"),
        ("file:/d/back%5Cslash.jpg", "/d/back\\slash.jpg"),
        ("FILE:///d/x.jpg", "/d/x.jpg"),
        ("file://elsewhere/d/x.jpg", "file://elsewhere/d/x.jpg"),  # not local: left alone
        ("gs://bucket/a b/x.jpg ", "gs://bucket/a b/x.jpg "),
        ("", os.getcwd()),
    ],
)
def test_normalize_uri_keeps_names_exactly(given, expected):
    assert normalize_uri(given) == expected


def test_file_uris_from_path_as_uri_name_the_real_files(tmp_path, sample_jpeg):
    paths = write_images(tmp_path, NAMES, sample_jpeg)
    for path in paths:
        uri = pathlib.Path(path).as_uri()
        assert normalize_uri(uri) == path and os.path.isfile(normalize_uri(uri))


def test_star_lists_every_legal_name_in_its_folder_only(tmp_path, sample_jpeg):
    paths = write_images(tmp_path / "d", NAMES, sample_jpeg)
    write_images(tmp_path / "d" / "sub", ["nested.jpg"], sample_jpeg)
    assert sorted(match_pattern(f"{tmp_path}/d/*")) == sorted(paths)
    assert glob_regex("/d/*.jpg").match("/d/back\\slash.jpg")
    assert not glob_regex("/d/*.jpg").match("/d/sub/x.jpg")
    assert glob_regex("/d/**.jpg").match("/d/sub/x.jpg")
    assert glob_regex("/d/[!/\\]*.jpg").match("/d/ab.jpg")  # a class keeps its meaning
    assert not glob_regex("/d/[!/\\]*.jpg").match("/d/\\b.jpg")


def test_text_manifest_lines_lose_only_their_terminator():
    assert text_line("\ufeff/d/x.jpg \r\n".encode(), first=True) == "/d/x.jpg "
    assert text_line("\ufeff/d/x.jpg\n".encode(), first=False) == "\ufeff/d/x.jpg"
    assert text_line(b"/d/a\rb.jpg\n", first=False) == "/d/a\rb.jpg"  # a lone CR is a char
    assert text_line(b"\t/d/x.jpg", first=False) == "\t/d/x.jpg"
    assert text_line(b"/d/x.jpg\r", first=False) == "/d/x.jpg\r"  # last line, no terminator
    lines = ["# comment", "", "   ", "/d/x.jpg ", " /d/y.jpg", "/d/#z.jpg"]
    assert list(uris_from_text(lines)) == ["/d/x.jpg ", " /d/y.jpg", "/d/#z.jpg"]


@pytest.mark.parametrize("kind", ["txt", "csv", "parquet"])
def test_manifests_of_each_kind_list_names_exactly(kind, tmp_path):
    uris = ["/d/x.jpg ", "/d/a, b.jpg", "/d/ü\u2028.jpg", "gs://b/k #1.jpg"]
    path = tmp_path / f"m.{kind}"
    if kind == "txt":
        # U+2028 would end a line for str.splitlines; here only '\n' does.
        path.write_bytes(("\ufeff" + "\r\n".join(["# listed", *uris[:2], "", *uris[2:]])).encode())
    elif kind == "csv":
        rows = ["id,uri", *(f'{i},"{u}"' for i, u in enumerate(uris)), "9,", "10,  "]
        path.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())
    else:
        pq.write_table(pa.table({"uri": [*uris, None, ""]}), path)
    assert list(manifest_uris(str(path))) == uris


def test_printable_shows_control_characters_as_escapes():
    assert printable("a b\\c #%20 ü.jpg") == "a b\\c #%20 ü.jpg"
    assert printable("\x1b[2Jx\u202egpj.exe\n") == "\\x1b[2Jx\\u202egpj.exe\\n"


# --- Runs of the CLI -----------------------------------------------------------------------


@pytest.mark.slow  # runs the real command
def test_hostile_names_are_listed_and_labelled_under_their_own_names(
    tmp_path, sample_jpeg, probe_model
):
    globbed = write_images(tmp_path / "globbed", NAMES, sample_jpeg)
    # Only 'lone.jpg ' exists (no 'lone.jpg'): stripping would make it a missing file.
    listed = write_images(
        tmp_path / "listed",
        ["lone.jpg ", "b c#d%41.jpg", "back\\slash.jpg", "ē 猫.jpg"],
        sample_jpeg,
    )
    manifest = tmp_path / "manifest.txt"
    lines = [
        "# file:// URIs as pathlib writes them, and a plain path with a trailing space",
        *(pathlib.Path(p).as_uri() for p in listed[1:]),
        "",
        "   ",
        listed[0],
    ]
    manifest.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())  # BOM, CRLF
    out = tmp_path / "out"
    proc = label(
        [f"--input={tmp_path}/globbed/*", f"--input_manifest={manifest}"], out, probe_model
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted, failed = labelled_once(out)
    assert failed == []
    assert predicted == sorted(globbed + listed)


@pytest.mark.slow  # runs the real command
def test_csv_manifest_with_a_byte_order_mark(tmp_path, sample_jpeg, probe_model):
    """As a spreadsheet saves 'CSV UTF-8': BOM, CRLF, quoted values."""
    paths = write_images(tmp_path / "img", ["a, b.jpg", "c.jpg ", "é.jpg"], sample_jpeg)
    manifest = tmp_path / "list.csv"
    rows = ["uri,note", *(f'"{p}",x' for p in paths)]
    manifest.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())
    out = tmp_path / "out"
    proc = label([f"--input_manifest={manifest}"], out, probe_model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert labelled_once(out) == (sorted(paths), [])


@pytest.mark.slow  # runs the real command
def test_output_inside_the_input_folder_is_never_input(tmp_path, sample_jpeg, probe_model):
    images = tmp_path / "photos"
    good = write_images(images, ["a.jpg", "b.jpg"], sample_jpeg)
    broken = images / "broken.jpg"
    broken.write_bytes(b"not an image")
    out = images / "labels"
    # Only ROOT/predictions/, ROOT/errors/ and ROOT/_temp/ are the run's: these are input.
    near = write_images(out, ["predictions.jpg"], sample_jpeg)
    near += write_images(out / "extra", ["kept.jpg"], sample_jpeg)
    first = label([f"--input={images}/**"], out, probe_model, "--max_error_ratio=1")
    assert first.returncode == 0, first.stderr[-3000:]
    expected = (sorted(good + near), [str(broken)])
    assert labelled_once(out) == expected
    files = {kind: output_files(str(out), kind) for kind in ("predictions", "errors")}

    second = label([f"--input={images}/**"], out, probe_model, "--max_error_ratio=1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert labelled_once(out) == expected  # no error rows for the first run's Parquet files
    assert {kind: output_files(str(out), kind) for kind in files} == files


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("given", ["FOLDER", "FOLDER/", ""])
def test_a_folder_as_input_is_a_start_up_error(given, tmp_path, sample_jpeg, probe_model):
    folder = tmp_path / "photos"
    write_images(folder, ["a.jpg"], sample_jpeg)
    out = tmp_path / "out"
    proc = label([f"--input={given.replace('FOLDER', str(folder))}"], out, probe_model)
    line = start_up_error(proc)
    named = str(folder) if given else ROOT  # '' is the current folder (the CLI runs in ROOT)
    assert f"--input {named} is a folder" in line and f"'{named}/**'" in line
    assert not out.exists()


def truncated_parquet(path: pathlib.Path) -> None:
    pq.write_table(pa.table({"uri": [f"/x/{i}.jpg" for i in range(1000)]}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_MANIFESTS = {
    "folder.txt": (lambda p: p.mkdir(), "is a folder"),
    "latin1.txt": (
        lambda p: p.write_bytes(b"/x/ok.jpg\n/x/caf\xe9.jpg\n"),
        "not UTF-8 text (line 2)",
    ),
    "latin1.csv": (lambda p: p.write_bytes(b"uri\n/x/caf\xe9.jpg\n"), "is not UTF-8 text"),
    "utf16.csv": (lambda p: p.write_text("uri\n/x/a.jpg\n", encoding="utf-16"), "not UTF-8"),
    "empty.txt": (lambda p: p.write_text("# nothing yet\n\n"), "lists no URI"),
    "no_uri.csv": (lambda p: p.write_text("path\n/x/a.jpg\n"), "has no 'uri' column"),
    "no_uri.parquet": (
        lambda p: pq.write_table(pa.table({"path": ["/x/a.jpg"]}), p),
        "has no 'uri' column",
    ),
    "ints.parquet": (
        lambda p: pq.write_table(pa.table({"uri": [1, 2]}), p),
        "'uri' column holds int64, not strings",
    ),
    "lists.parquet": (
        lambda p: pq.write_table(pa.table({"uri": [["/x/a.jpg"]]}), p),
        "'uri' column holds list<",
    ),
    "text.parquet": (lambda p: p.write_text("uri\n/x/a.jpg\n"), "not a readable Parquet file"),
    "truncated.parquet": (truncated_parquet, "not a readable Parquet file"),
}


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("name", BAD_MANIFESTS)
def test_a_bad_manifest_is_one_line_naming_it(name, tmp_path, probe_model):
    make, message = BAD_MANIFESTS[name]
    manifest = tmp_path / name
    make(manifest)
    with pytest.raises(InputError, match="--input_manifest"):
        check_manifest(str(manifest))
    out = tmp_path / "out"
    line = start_up_error(label([f"--input_manifest={manifest}"], out, probe_model))
    assert f"--input_manifest {manifest}" in line and message in line
    assert not out.exists()


def part_file(out: pathlib.Path, kind: str) -> pathlib.Path:
    folder = out / kind / f"date={DATE}"
    folder.mkdir(parents=True)
    return folder / "part-20250304T000000-abcdef-00000-of-00001.parquet"


BAD_PARTS = {
    "empty": (lambda p: p.write_bytes(b""), "not a readable Parquet file"),
    "text": (lambda p: p.write_text("uri\n/x/a.jpg\n"), "not a readable Parquet file"),
    "truncated": (truncated_parquet, "not a readable Parquet file"),
    "no uri": (lambda p: pq.write_table(pa.table({"x": [1]}), p), "has no 'uri' column"),
    "int uri": (lambda p: pq.write_table(pa.table({"uri": [1]}), p), "'uri' column of int64"),
}


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("kind", ["predictions", "errors"])
@pytest.mark.parametrize("name", BAD_PARTS)
def test_a_broken_partition_file_is_one_line_naming_it(
    name, kind, tmp_path, image_dir, probe_model
):
    out = tmp_path / "out"
    make, message = BAD_PARTS[name]
    path = part_file(out, kind)
    make(path)
    with pytest.raises(PartFileError):
        check_partitions(str(out), DATE)
    line = start_up_error(label([f"--input={image_dir['root']}/*.png"], out, probe_model))
    assert f"error: {path} " in line and message in line
    assert "move it out of the partition" in line
    assert sorted(p.name for p in (out / kind / f"date={DATE}").iterdir()) == [path.name]


def test_whole_partition_files_pass_the_check(tmp_path):
    out = tmp_path / "out"
    for kind, schema, row in [
        ("predictions", PREDICTION_SCHEMA, None),
        ("errors", ERROR_SCHEMA, error_row("/x/a.jpg", "read", "not found", "gone")),
    ]:
        pq.write_table(
            pa.Table.from_pylist([row] if row else [], schema=schema), part_file(out, kind)
        )
    check_partitions(str(out), DATE)  # raises if either were refused


def test_partition_files_other_tools_rewrote_are_read_as_output(tmp_path):
    """A 'uri' column as large_string (Polars writes it so), string_view or dictionary-encoded,
    with other columns and codecs, is output like the job's own: checked, and its URIs done."""
    out = tmp_path / "out"
    uris = ["/x/a.jpg", "/x/b.jpg", "/x/a.jpg"]
    folder = out / "predictions" / f"date={DATE}"
    folder.mkdir(parents=True)
    for i, (column, codec) in enumerate(
        [
            (pa.array(uris, pa.large_string()), "zstd"),
            (pa.array(uris).dictionary_encode(), "gzip"),
            (pa.array(uris, pa.string()), "none"),
            (pa.array(uris, pa.string_view()), "snappy"),
        ]
    ):
        table = pa.table({"extra": [1, 2, 3], "uri": column})
        pq.write_table(table, folder / f"part-x-{i}.parquet", compression=codec, row_group_size=1)
    check_partitions(str(out), DATE)
    found = existing(str(out), skip_policy(SKIP_DATE, DATE))
    assert sorted(found) == ["/x/a.jpg", "/x/b.jpg"] and len(found["/x/a.jpg"]) == 8
