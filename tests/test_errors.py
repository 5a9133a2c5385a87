"""Error rows' reasons (the vocabulary) and the summary's breakdown of them, as pure functions."""

import pytest
from apache_beam.io.filesystems import FileSystems

from pipeline.summary import failure_breakdown
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
