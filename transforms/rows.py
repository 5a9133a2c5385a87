"""The two output record types (predictions, errors): their Parquet schemas and builders."""

from __future__ import annotations

import datetime as dt
import re

import pyarrow as pa

PREDICTION_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("class_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("model", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)

ERROR_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def describe(exc: BaseException) -> str:
    """'ExceptionType: message', the form error rows carry."""
    return f"{type(exc).__name__}: {exc}"


def reason_of(error: str) -> str:
    """A short, low-cardinality reason for grouping errors: the exception type, or for a
    DecodeError the first clause of its message ('empty file', 'decompression bomb', ...)."""
    kind, _, message = error.partition(": ")
    if kind != "DecodeError" or not message:
        return kind.rsplit(".", 1)[-1] or "unknown"
    return re.split(r" \(|: ", message, maxsplit=1)[0]


def error_row(uri: str, stage: str, error: str) -> dict:
    return {
        "uri": uri,
        "stage": stage,
        "reason": reason_of(error),
        "error": error,
        "processed_at": utc_now(),
    }
