"""Error rows' reasons (the vocabulary) and the summary's breakdown of them, as pure functions."""

import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline.exit_status import OK, TOO_MANY_ERRORS
from pipeline.summary import failure_breakdown, outcome
from tests.images import BAD_KINDS, bad_files
from transforms import metrics
from transforms import vocabulary as v
from transforms.images import decode_and_resize
from transforms.rows import failure_row


def raised_by(fn, *args) -> BaseException:
    try:
        fn(*args)
    except Exception as e:  # the exception is the result here
        return e
    raise AssertionError(f"{fn.__name__}{args} did not raise")


def test_missing_file_through_beams_filesystems_is_not_found(tmp_path):
    exc = raised_by(FileSystems.open, str(tmp_path / "missing.jpg"))
    assert v.reason_for(v.READ, exc) == v.NOT_FOUND


def test_local_permission_and_folder_errors_map_by_type():
    assert v.reason_for(v.READ, PermissionError(13, "denied")) == v.NO_ACCESS
    assert v.reason_for(v.READ, IsADirectoryError(21, "folder")) == v.NOT_A_FILE
    assert v.reason_for(v.READ, TimeoutError("slow")) == v.READ_FAILED


def test_google_client_errors_map_by_type():
    from google.api_core import exceptions

    assert v.reason_for(v.READ, exceptions.NotFound("gone")) == v.NOT_FOUND
    assert v.reason_for(v.READ, exceptions.Forbidden("no")) == v.NO_ACCESS
    assert v.reason_for(v.READ, exceptions.ServiceUnavailable("503")) == v.READ_FAILED


def test_wrapped_storage_errors_keep_their_cause():
    # Beam's filesystems wrap the client's exception; the reason comes from the cause.
    try:
        try:
            raise FileNotFoundError("x.jpg")
        except FileNotFoundError as inner:
            raise OSError("could not open") from inner
    except OSError as outer:
        assert v.reason_for(v.READ, outer) == v.NOT_FOUND


@pytest.mark.parametrize("name", sorted(BAD_KINDS))
def test_every_decode_failure_has_a_vocabulary_reason(name, sample_jpeg):
    exc = raised_by(decode_and_resize, bad_files(sample_jpeg)[name], 300)
    row = failure_row("gs://b/" + name, v.DECODE, exc)
    assert row["reason"] == BAD_KINDS[name]
    assert row["reason"] in v.REASONS[v.DECODE]
    assert row["error"].startswith("DecodeError: ")


def test_reasons_belong_to_one_stage_each():
    reasons = [r for stage in v.STAGES for r in v.REASONS[stage]]
    assert len(reasons) == len(set(reasons))
    assert set(v.REASONS) == set(v.STAGES)


def test_breakdown_groups_by_stage_then_count():
    counts = {
        metrics.IMAGES_READ: 10,
        metrics.failed_name("decode"): 3,
        metrics.reason_name("decode", "empty file"): 1,
        metrics.reason_name("decode", "not an image"): 2,
        metrics.reason_name("read", "not found"): 1,
        metrics.reason_name("inference", "model failed"): 0,
    }
    assert failure_breakdown(counts) == "decode: 2 not an image, 1 empty file; read: 1 not found"
    assert failure_breakdown({metrics.IMAGES_READ: 3}) == ""


def ratio_outcome(labelled: int, failed: int, max_error_ratio: float):
    counts = {metrics.IMAGES_LABELLED: labelled, metrics.failed_name(v.DECODE): failed}
    written = {"predictions": labelled, "errors": failed}
    return outcome(counts, written, max_error_ratio)


@pytest.mark.parametrize(
    "labelled, failed, bound, line",
    [
        (34, 1, 0.0, "1 of 35 images failed (3%), more than --max_error_ratio 0 allows"),
        (75, 4, 0.05, "4 of 79 images failed (5.1%), more than --max_error_ratio 0.05 allows"),
        (57, 3, 0.049, "3 of 60 images failed (5.0%), more than --max_error_ratio 0.049 allows"),
        (2, 1, 0.3333, "1 of 3 images failed (33.333%), more than --max_error_ratio 0.3333"),
        (0, 5, 0.5, "5 of 5 images failed (100%), more than --max_error_ratio 0.5 allows"),
        (
            0,
            5,
            1.0,
            "5 of 5 images failed (100%): a run where every image failed fails "
            "whatever --max_error_ratio says (it is 1)",
        ),
        (
            0,
            5,
            0.1 + 0.2,
            "5 of 5 images failed (100%), more than --max_error_ratio 0.30000000000000004 allows",
        ),
    ],
)
def test_the_error_ratio_line_is_true_at_every_bound(labelled, failed, bound, line):
    status, why = ratio_outcome(labelled, failed, bound)
    assert status == TOO_MANY_ERRORS and why.startswith(line), why
    assert why.endswith("; the error rows say why")


@pytest.mark.parametrize("labelled, failed, bound", [(60, 0, 0.0), (57, 3, 0.05), (1, 2, 1.0)])
def test_at_or_under_the_bound_a_run_passes(labelled, failed, bound):
    assert ratio_outcome(labelled, failed, bound) == (OK, None)


def test_error_text_is_one_line_whatever_the_uri_holds(tmp_path):
    """A read error's message quotes its path; a path holding a newline, a terminal escape
    and a right-to-left override is escaped in the row's text, kept exact in its uri."""
    from transforms.storage import local
    from transforms.storage.bounded import ByteBudget

    path = tmp_path / "a\nb\x1b[31m\u202egpj.jpg"
    path.write_bytes(b"more than the limit")
    exc = raised_by(local.read_bounded, str(path), 4, ByteBudget(1 << 20))
    row = failure_row(str(path), v.READ, exc)
    assert row["uri"] == str(path) and row["reason"] == v.TOO_LARGE
    assert len(row["error"].splitlines()) == 1 and "\x1b" not in row["error"]
    assert "a\\nb\\x1b[31m\\u202egpj.jpg is 19 bytes" in row["error"], row["error"]
