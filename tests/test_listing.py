"""Listing local inputs: one URI per file however it is written, names that are not UTF-8,
glob escapes, dangling links, folder links and loops, paths past PATH_MAX, unlistable folders."""

from __future__ import annotations

import os
import pathlib

import pytest

from tests.odd_files import BAD_NAME, NAME_MAX, jpeg, label
from tests.runs import obeying_file_modes, read_rows
from tests.test_hostile_inputs import labelled_once
from transforms.inputs import list_local, match_pattern
from transforms.storage.uris import glob_escape, normalize_uri, uri_for_path

PATH_MAX = os.pathconf("/", "PC_PATH_MAX")


# --- URI rules, without Beam ---------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    ["//d/a/b.jpg", "///d/a/b.jpg", "/d//a/b.jpg", "/d/./a/b.jpg", "/d/a/../a/b.jpg"],
)
def test_one_file_written_two_ways_is_one_uri(given):
    assert normalize_uri(given) == "/d/a/b.jpg"
    assert normalize_uri("file://" + given) == "/d/a/b.jpg"


def test_names_that_are_not_utf8_become_lossless_file_uris(tmp_path):
    path = str(tmp_path / BAD_NAME)
    uri = uri_for_path(path)
    assert uri.endswith("/bad%FF%FE.jpg") and uri.startswith("file:///")
    uri.encode("utf-8")  # a Parquet string can hold it
    assert normalize_uri(uri) == uri == normalize_uri(normalize_uri(uri))  # stable
    assert os.fsencode(pathlib.Path(path)) == os.fsencode(path)
    # Readable names keep their plain form, '%' included: the two never collide.
    assert uri_for_path("/d/bad%FF%FE.jpg") == "/d/bad%FF%FE.jpg"
    assert normalize_uri("file:///d/%C3%A9.jpg") == "/d/é.jpg"


def test_glob_escape_matches_exactly_the_literal_path(tmp_path):
    root = tmp_path / "o[1]*?"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.jpg").write_bytes(b"x")
    (tmp_path / "o1").mkdir()
    (tmp_path / "o1" / "sub").mkdir()
    (tmp_path / "o1" / "sub" / "x.jpg").write_bytes(b"y")
    found = list(match_pattern(glob_escape(str(root)) + "/sub/*.jpg"))
    assert found == [str(root / "sub" / "x.jpg")]


# --- Listing, without Beam -----------------------------------------------------------------


def make_tree(tmp_path: pathlib.Path, data: bytes) -> tuple[pathlib.Path, dict[str, str]]:
    """A folder of hostile names and links; {path: what the run must make of it}."""
    top = tmp_path / "photos"
    outside = tmp_path / "elsewhere"
    cases = {
        jpeg(top / "a.jpg", data): "labelled",
        jpeg(top / BAD_NAME, data): "labelled",
        jpeg(top / os.fsdecode(b"sub\xe9") / "c.jpg", data): "labelled",
        jpeg(top / os.fsdecode(b"notimg\x80.jpg"), b"not an image"): "decode",
        jpeg(outside / "linked.jpg", data): "labelled (through the link)",
    }
    (top / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    cases[str(top / "dangling.jpg")] = "read: not found"
    (top / "loop").symlink_to(top)  # listed once, never again
    (top / "twice").symlink_to(top / os.fsdecode(b"sub\xe9"))  # a folder already listed
    (top / "out").symlink_to(outside)
    del cases[str(outside / "linked.jpg")]
    cases[str(top / "out" / "linked.jpg")] = "labelled"
    return top, cases


def test_listing_keeps_every_name_and_follows_folder_links_once(tmp_path, sample_jpeg):
    top, cases = make_tree(tmp_path, sample_jpeg)
    listed = list(list_local(str(top)))
    assert sorted(listed) == sorted(cases)  # no loop, no second name for one folder


def deep_file(top: pathlib.Path, data: bytes) -> str:
    """A file whose path is longer than PATH_MAX, made through folder descriptors."""
    name = "d" * (NAME_MAX - 5)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    path = str(top)
    try:
        while len(os.fsencode(path)) <= PATH_MAX:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = child, f"{path}/{name}"
        out = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)
    return f"{path}/deep.jpg"


def test_listing_reaches_paths_longer_than_path_max(tmp_path, sample_jpeg):
    top = tmp_path / "deep"
    top.mkdir()
    path = deep_file(top, sample_jpeg)
    assert len(os.fsencode(path)) > PATH_MAX
    assert list(list_local(str(top))) == [path]
    assert list(match_pattern(f"{top}/**.jpg")) == [path]


# --- Runs of the CLI -----------------------------------------------------------------------


@pytest.mark.slow  # runs the real command
def test_a_hostile_tree_is_labelled_each_uri_once(tmp_path, sample_jpeg, probe_model):
    top, cases = make_tree(tmp_path, sample_jpeg)
    deep = deep_file(top, sample_jpeg)
    cases[deep] = "read: too long"
    out = tmp_path / "out"
    # The path past PATH_MAX is a 'read failed' row, a reason later runs try again
    # (tests/test_retries.py): here the second run is to find every URI done.
    args = [f"--input={top}/**", "--max_error_ratio=1", "--max_attempts=1"]
    proc = label(args, out, probe_model, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    uri = {path: uri_for_path(path) for path in cases}
    predicted, failed = labelled_once(out)
    assert predicted == sorted(uri[p] for p, what in cases.items() if what.startswith("labelled"))
    assert failed == sorted(uri[p] for p, what in cases.items() if not what.startswith("label"))
    errors = {r["uri"]: r for r in read_rows(str(out), "errors")}
    assert errors[uri[str(top / "dangling.jpg")]]["reason"] == "not found"
    assert errors[deep]["stage"] == "read"
    # Again: every URI, the non-UTF-8 ones included, is found done and skipped.
    again = label(args, out, probe_model, timeout=180)
    assert again.returncode == 0, again.stderr[-3000:]
    assert labelled_once(out) == (predicted, failed)


@pytest.mark.slow  # runs the real command
def test_a_folder_that_cannot_be_listed_is_a_no_access_row(tmp_path, sample_jpeg, probe_model):
    """chmod 000 on a folder under '**', for a process without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (root lists any folder otherwise): setpriv drops them. The folder is
    one 'no access' row; the photos beside it are labelled."""
    obeying_modes = obeying_file_modes()
    top = tmp_path / "photos"
    good = [jpeg(top / "a.jpg", sample_jpeg), jpeg(top / "open" / "b.jpg", sample_jpeg)]
    locked = top / "locked"
    jpeg(locked / "c.jpg", sample_jpeg)
    locked.chmod(0)
    out = tmp_path / "out"
    try:
        proc = label(
            [f"--input={top}/**", "--max_error_ratio=0.5"],
            out,
            probe_model,
            prefix=obeying_modes,
            timeout=180,
        )
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted, failed = labelled_once(out)
    assert predicted == sorted(good)
    assert failed == [str(locked)]
    (row,) = read_rows(str(out), "errors")
    assert (row["stage"], row["reason"]) == ("read", "no access")
    assert "cannot be listed" in row["error"]
