"""The two output record types (predictions, errors): their Parquet schemas and builders."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from transforms.vocabulary import reason_for

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


def error_row(uri: str, stage: str, reason: str, error: str) -> dict:
    """An error row; `reason` is one of vocabulary.REASONS[stage], `error` the detail."""
    return {
        "uri": uri,
        "stage": stage,
        "reason": reason,
        "error": error,
        "processed_at": utc_now(),
    }


def failure_row(uri: str, stage: str, exc: BaseException) -> dict:
    """The error row for an exception raised while `stage` worked on `uri`."""
    return error_row(uri, stage, reason_for(stage, exc), describe(exc))
