"""Error rows' reasons and the summary's breakdown of them, as pure functions."""

import pytest

from pipeline.summary import failure_breakdown
from transforms.rows import error_row, reason_of


@pytest.mark.parametrize(
    "error,reason",
    [
        ("DecodeError: empty file (0 bytes)", "empty file"),
        ("DecodeError: decompression bomb: 20000x20000 = 400000000 pixels", "decompression bomb"),
        (
            "DecodeError: corrupt or truncated image data (JPEG): image file is truncated",
            "corrupt or truncated image data",
        ),
        ("DecodeError: undecodable PNG image: broken data stream", "undecodable PNG image"),
        ("NotFound: 404 GET https://storage.googleapis.com/b/o/x.jpg", "NotFound"),
        ("FileNotFoundError: [Errno 2] No such file or directory: '/x.jpg'", "FileNotFoundError"),
        (
            "tensorflow.python.framework.errors_impl.InvalidArgumentError: bad",
            "InvalidArgumentError",
        ),
        ("", "unknown"),
    ],
)
def test_reasons_are_short_and_groupable(error, reason):
    assert reason_of(error) == reason
    assert error_row("gs://b/x.jpg", "read", error)["reason"] == reason


def test_breakdown_groups_by_stage_then_count():
    counts = {
        "images_read": 10,
        "failed_decode": 3,
        "reason:decode:empty file": 1,
        "reason:decode:not an image or unsupported format": 2,
        "reason:read:NotFound": 1,
        "reason:inference:InvalidArgumentError": 0,
    }
    assert failure_breakdown(counts) == (
        "decode: 2 not an image or unsupported format, 1 empty file; read: 1 NotFound"
    )
    assert failure_breakdown({"images_read": 3}) == ""
