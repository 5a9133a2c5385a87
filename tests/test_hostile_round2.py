"""Hostile input, second round (issue 21, listing, start-up reads, options, the report): each
case a real file, folder, link, pipe or run of the CLI, ending with every URI exactly once in
the output or a one-line start-up error (exit 2), never a hang or a traceback."""

from __future__ import annotations

import math
import os
import pathlib
import subprocess
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, check_number, enclosing_output
from pipeline.report.cli import shorten
from tests.runs import cli, obeying_file_modes, read_rows, report_cli
from tests.test_hostile_inputs import DATE, labelled_once, start_up_error
from transforms.inputs import (
    MAX_URI_BYTES,
    InputError,
    bounded_lines,
    list_local,
    manifest_uris,
    match_pattern,
)
from transforms.models.labels import parse_labels
from transforms.rows import ERROR_SCHEMA, error_row
from transforms.storage.local import read_whole
from transforms.storage.uris import glob_escape, normalize_uri, uri_for_path
from transforms.vocabulary import ImageError

BAD_NAME = os.fsdecode(b"bad\xff\xfe.jpg")  # not UTF-8: the file system's bytes, escaped
PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")


def label(inputs, out, model, *extra, timeout=120, **popen) -> subprocess.CompletedProcess:
    """The CLI on `inputs` with the probe model, small images and a fixed date; a hang fails
    the test (subprocess.TimeoutExpired) instead of stalling it."""
    return cli(
        *inputs,
        f"--output={out}",
        f"--model={model}",
        "--image_size=32",
        f"--date={DATE}",
        *extra,
        timeout=timeout,
        **popen,
    )


def jpeg(path: pathlib.Path | str, data: bytes) -> str:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(path).write_bytes(data)
    return str(path)


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
    found = match_pattern(glob_escape(str(root)) + "/sub/*.jpg")
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
    assert match_pattern(f"{top}/**.jpg") == [path]


# --- Start-up reads, without Beam ----------------------------------------------------------


def test_start_up_reads_take_regular_files_only_and_bounded(tmp_path):
    small = tmp_path / "labels.txt"
    small.write_bytes(b"a\nb\n")
    assert read_whole(str(small), 10) == b"a\nb\n"
    with pytest.raises(ImageError, match="too large|more than"):
        read_whole(str(small), 3)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo), str(tmp_path)):
        with pytest.raises(ImageError, match="not a regular file"):
            read_whole(path, 1 << 20)


def test_labels_split_on_line_feeds_only():
    data = "a\nb\x85c\r\nd\u2028e\nf\x0cg\x0bh\x1ci\n\n".encode()
    assert parse_labels(data) == ["a", "b\x85c", "d\u2028e", "f\x0cg\x0bh\x1ci"]
    assert parse_labels(b"\xef\xbb\xbfa\nb") == ["a", "b"]  # a byte-order mark is not a name


def test_a_manifest_line_longer_than_a_uri_is_refused_unread(tmp_path):
    manifest = tmp_path / "m.txt"
    with open(manifest, "wb") as f:
        f.write(b"/x/ok.jpg\n")
        f.write(b"/x/" + b"a" * (64 << 20) + b"\n")  # 64 MiB, one line
    with pytest.raises(InputError, match="line 2 is longer than"):
        list(manifest_uris(str(manifest)))
    with open(manifest, "rb") as f, pytest.raises(InputError):
        try:
            list(bounded_lines(f, str(manifest), MAX_URI_BYTES))
        finally:
            assert f.tell() <= len(b"/x/ok.jpg\n") + MAX_URI_BYTES + 2  # not the 64 MiB
    fine = tmp_path / "fine.txt"
    fine.write_text("/x/" + "a" * (MAX_URI_BYTES - 3) + "\n")
    assert len(next(manifest_uris(str(fine)))) == MAX_URI_BYTES


# --- Options, without Beam -----------------------------------------------------------------


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0, -1, 1e400, 10**9])
def test_numbers_out_of_bounds_are_refused(value):
    with pytest.raises(ConfigError, match="--x must be between 1 and 100"):
        check_number("x", value, 1, 100, "MB")


def test_numbers_in_bounds_pass():
    assert check_number("x", 1, 1, 100, "MB") == 1
    assert check_number("x", 100.0, 1, 100, "MB") == 100.0


def test_an_output_inside_another_outputs_folders_is_found(tmp_path):
    other = tmp_path / "other"
    (other / "predictions" / f"date={DATE}").mkdir(parents=True)
    (other / "predictions" / f"date={DATE}" / "part-x.parquet").write_bytes(b"")
    (other / "_temp").mkdir()
    for inside in [
        other / "predictions" / "x",
        other / "predictions" / f"date={DATE}" / "x",
        other / "errors" / "x",
        other / "_temp" / "run" / "x",
    ]:
        assert enclosing_output(str(inside)) == str(other), inside
    for fine in [other, other / "more", tmp_path / "predictions" / "x", tmp_path / "x"]:
        assert enclosing_output(str(fine)) is None, fine


def test_long_values_are_shortened_for_a_terminal():
    assert shorten("short", 10) == "short"
    long = "/a/" + "x" * 1000 + "/end.jpg"
    shown = shorten(long, 60)
    assert len(shown) == 60 and shown.startswith("/a/x") and shown.endswith("end.jpg")


# --- Runs of the CLI -----------------------------------------------------------------------


@pytest.mark.slow  # runs the real command
def test_a_hostile_tree_is_labelled_each_uri_once(tmp_path, sample_jpeg, probe_model):
    top, cases = make_tree(tmp_path, sample_jpeg)
    deep = deep_file(top, sample_jpeg)
    cases[deep] = "read: too long"
    out = tmp_path / "out"
    args = [f"--input={top}/**", "--max_error_ratio=1"]
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


@pytest.mark.slow  # runs the real command
def test_a_manifest_on_stdin_is_read_once(tmp_path, sample_jpeg, probe_model):
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(5)]
    paths.append(jpeg(tmp_path / "img" / BAD_NAME, sample_jpeg))
    lines = [*paths[:5], uri_for_path(paths[5])]
    # The same files written other ways: one URI each.
    lines += ["/" + paths[0], paths[1].replace("/img/", "/img/./"), paths[2].replace("/", "//")]
    too_long = "/x/" + "n" * (NAME_MAX + 1) + ".jpg"  # a name over NAME_MAX: a read error
    out = tmp_path / "out"
    proc = label(
        ["--input_manifest=/dev/stdin", "--max_error_ratio=1"],
        out,
        probe_model,
        input="\n".join([*lines, too_long]) + "\n",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted, failed = labelled_once(out)
    assert predicted == sorted([*paths[:5], uri_for_path(paths[5])])
    assert failed == [too_long]


@pytest.mark.slow  # runs the real command
def test_a_manifest_fifo_is_read_once(tmp_path, sample_jpeg, probe_model):
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(3)]
    fifo = tmp_path / "list.csv"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as f:  # blocks until the run opens it
            f.write("uri\n" + "\n".join(paths) + "\n")

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    out = tmp_path / "out"
    proc = label([f"--input_manifest={fifo}"], out, probe_model, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert labelled_once(out) == (sorted(paths), [])


def sparse(path: pathlib.Path, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def fifo_at(path: pathlib.Path) -> str:
    os.mkfifo(path)
    return str(path)


def model_with_pb(tmp_path: pathlib.Path, probe_model: str, make) -> str:
    """A copy of the probe model whose saved_model.pb is replaced by make(path)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(probe_model, model, symlinks=True)
    (model / "saved_model.pb").unlink()
    make(model / "saved_model.pb")
    return str(model)


def link_to(target: str):
    return lambda p: p.symlink_to(target)


BAD_START_UP_READS = {
    "labels /dev/zero": ("--labels_file", lambda t: "/dev/zero", "not a regular file"),
    "labels fifo": ("--labels_file", lambda t: fifo_at(t / "fifo"), "not a regular file"),
    "labels folder": ("--labels_file", lambda t: str(t), "not a regular file"),
    "labels 2 GiB": ("--labels_file", lambda t: sparse(t / "big.txt", 2 << 30), "more than"),
    "manifest /dev/zero": ("--input_manifest", lambda t: "/dev/zero", "more than"),
    "manifest one long line": (
        "--input_manifest",
        lambda t: sparse(t / "m.txt", 1 << 30),
        "line 1 is longer than",
    ),
    "manifest 8 GiB": ("--input_manifest", lambda t: sparse(t / "m.csv", 8 << 30), "more than"),
    "manifest block device": ("--input_manifest", lambda t: "/dev/loop0", "block device"),
}


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("case", BAD_START_UP_READS)
def test_a_bad_start_up_file_is_one_line(case, tmp_path, image_dir, probe_model):
    flag, make, message = BAD_START_UP_READS[case]
    if case.endswith("block device") and not os.path.exists("/dev/loop0"):
        pytest.skip("no block device here")
    path = make(tmp_path)
    inputs = [] if flag == "--input_manifest" else [f"--input={image_dir['root']}/*.png"]
    out = tmp_path / "out"
    line = start_up_error(label([*inputs, f"{flag}={path}"], out, probe_model, timeout=90))
    assert f"{flag} {path}" in line and message in line
    assert not out.exists()


@pytest.mark.slow  # runs the real command; waits out the idle limit
def test_a_manifest_fifo_nobody_writes_is_one_line(tmp_path, probe_model):
    fifo = fifo_at(tmp_path / "m.txt")
    line = start_up_error(label([f"--input_manifest={fifo}"], tmp_path / "out", probe_model))
    assert f"--input_manifest {fifo}" in line and "nothing arrived" in line


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize(
    "make,message",
    [
        (link_to("/dev/zero"), "not a regular file"),
        (fifo_at, "not a regular file"),
        (lambda p: sparse(p, 3 << 30), "more than"),
    ],
    ids=["dev-zero", "fifo", "3GiB"],
)
def test_a_bad_saved_model_pb_is_one_line(make, message, tmp_path, image_dir, probe_model):
    model = model_with_pb(tmp_path, probe_model, make)
    proc = label([f"--input={image_dir['root']}/*.png"], tmp_path / "out", model, timeout=90)
    line = start_up_error(proc)
    assert f"--model {model}" in line and "saved_model.pb" in line and message in line


BAD_OPTIONS = {
    "--max_object_mb=inf": "--max_object_mb must be between",
    "--max_object_mb=nan": "--max_object_mb must be between",
    "--max_object_mb=1e400": "--max_object_mb must be between",
    "--max_object_mb=0": "--max_object_mb must be between",
    "--max_inflight_mb=inf": "--max_inflight_mb must be between",
    "--max_inflight_mb=1e9": "--max_inflight_mb must be between",
    "--read_concurrency=100000": "--read_concurrency must be between",
    "--read_concurrency=0": "--read_concurrency must be between",
    "--batch_size=1000000": "--batch_size must be between",
    "--batch_size=-3": "--batch_size must be between",
    "--progress_interval=1e-6": "--progress_interval must be between",
    "--progress_interval=inf": "--progress_interval must be between",
    "--progress_interval=nan": "--progress_interval must be between",
    "--max_error_ratio=nan": "--max_error_ratio must be between",
}


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("option", BAD_OPTIONS)
def test_numeric_options_out_of_bounds_are_one_line(option, tmp_path, image_dir, probe_model):
    out = tmp_path / "out"
    line = start_up_error(label([f"--input={image_dir['root']}/*.png", option], out, probe_model))
    assert BAD_OPTIONS[option] in line
    assert not out.exists()


def test_help_states_the_bounds():
    proc = cli("--help", timeout=120)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for bound in ["at most 1024", "at most 512", "at most 16384", "at most 4096", "0.1 to 86400"]:
        assert bound in text, bound


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("name", ["o[1]", "o[!x]*?", "o]"])
def test_an_output_with_glob_characters_works(name, tmp_path, sample_jpeg, probe_model):
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(3)]
    out = tmp_path / name
    (tmp_path / "o1").mkdir()  # what '[1]' would match as a class
    for _ in range(2):  # the second run finds all three done
        proc = label([f"--input={tmp_path}/img/*"], out, probe_model)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # (the helper lists ROOT/<kind>/** with Beam's glob: ROOT's own '[' escaped)
        assert labelled_once(pathlib.Path(glob_escape(str(out)))) == (sorted(paths), [])
    assert "3 already in the output" in proc.stderr
    assert not any((out / "_temp").iterdir()) if (out / "_temp").exists() else True
    assert list((tmp_path / "o1").iterdir()) == []


@pytest.mark.slow  # runs the real command
def test_an_output_inside_another_output_is_refused(tmp_path, sample_jpeg, probe_model):
    paths = [jpeg(tmp_path / "img" / f"{i}.jpg", sample_jpeg) for i in range(2)]
    first = tmp_path / "first"
    proc = label([f"--input={tmp_path}/img/*"], first, probe_model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for inside in ["predictions/x", f"errors/date={DATE}/x", "_temp/x"]:
        out = first / inside
        line = start_up_error(label([f"--input={tmp_path}/img/*"], out, probe_model))
        assert f"--output {out} is inside the output {first}" in line
    assert labelled_once(first) == (sorted(paths), [])


@pytest.mark.slow  # runs the real command
def test_labels_with_unicode_line_breaks_inside_names(tmp_path, image_dir, probe_model):
    names = [f"class {i}" for i in range(1000)]
    names[1], names[2], names[3] = "next\x85line", "line\u2028sep", "form\x0cfeed"
    labels = tmp_path / "labels.txt"
    labels.write_bytes(("\r\n".join(names) + "\r\n").encode())
    out = tmp_path / "out"
    inputs = [f"--input={image_dir['root']}/*.png", f"--labels_file={labels}"]
    proc = label(inputs, out, probe_model, "--max_error_ratio=1")
    assert proc.returncode == 0, proc.stderr[-3000:]


def write_errors(root: pathlib.Path, uris: list[str]) -> None:
    folder = root / "errors" / f"date={DATE}"
    folder.mkdir(parents=True)
    rows = [error_row(u, "read", "not found", "gone") for u in uris]
    pq.write_table(pa.Table.from_pylist(rows, schema=ERROR_SCHEMA), folder / "part-x.parquet")


@pytest.mark.slow  # runs the real command
@pytest.mark.parametrize("sample", ["-1", "0", "1001"])
def test_report_sample_must_be_positive_and_bounded(sample, tmp_path):
    write_errors(tmp_path / "out", ["/x/a.jpg"])
    proc = report_cli(str(tmp_path / "out"), f"--sample={sample}", f"--out={tmp_path}/r")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "--sample must be between 1 and" in lines[0], proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # runs the real command
def test_report_shortens_long_values_in_the_terminal(tmp_path):
    long = "/x/" + "é" * 20000 + "\x1b[2J.jpg"
    write_errors(tmp_path / "out", [long])
    proc = report_cli(str(tmp_path / "out"), f"--out={tmp_path}/r")
    assert proc.returncode == 0, proc.stderr
    assert max(len(line) for line in proc.stdout.splitlines()) <= 160
    assert "\x1b" not in proc.stdout and "…" in proc.stdout
