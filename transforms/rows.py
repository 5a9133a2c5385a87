"""The two output record types (predictions, errors): their Parquet schemas and builders."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from transforms.printable import printable
from transforms.vocabulary import READ, ImageError, reason_for

# Which input, which weights and which pixels produced a row (README "Output"): the source's
# version as listed (storage/listing.py), a digest of the model's content
# (models/catalog.model_version) and what changes pixels (images.preprocess_id). What a re-run
# compares to skip what is done: (uri, source_version, model_version). Predictions also say
# which labels were kept (postprocess.labelling_id: --top_k and the class names), so a run
# with others says it treats them as done (done.labelled_otherwise).
SOURCE_VERSION, MODEL_VERSION, PREPROCESS = "source_version", "model_version", "preprocess"
LABELLING = "labelling"
PROVENANCE = [
    (SOURCE_VERSION, pa.string()),
    (MODEL_VERSION, pa.string()),
    (PREPROCESS, pa.string()),
]

PREDICTION_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("class_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("model", pa.string()),
        *PROVENANCE,
        (LABELLING, pa.string()),
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)

ERROR_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("error", pa.string()),
        *PROVENANCE,
        ("processed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def describe(exc: BaseException) -> str:
    """'ExceptionType: message (notes)', the form error rows carry (a read tried several
    times notes how many: storage/retries.py)."""
    notes = "; ".join(getattr(exc, "__notes__", None) or ())
    return f"{type(exc).__name__}: {exc}{f' ({notes})' if notes else ''}"


def error_row(uri: str, stage: str, reason: str, error: str, source_version: str = "") -> dict:
    """An error row; `reason` is one of vocabulary.REASONS[stage], `error` the detail, one
    line whatever the URIs and messages in it hold (control characters escaped: printable);
    the model version and preprocessing are stamped on as the rows are written."""
    return {
        "uri": uri,
        "stage": stage,
        "reason": reason,
        "error": printable(error),
        SOURCE_VERSION: source_version,
        "processed_at": utc_now(),
    }


def failure_row(uri: str, stage: str, exc: BaseException, source_version: str = "") -> dict:
    """The error row for an exception raised while `stage` worked on `uri`. Past the read,
    only this project's own messages (ImageError) are kept: a decoder's or other library's
    message may quote the bytes it choked on, and error rows hold no content of the input,
    so of those only the exception type is kept."""
    if stage != READ and not isinstance(exc, ImageError):
        return error_row(uri, stage, reason_for(stage, exc), type(exc).__name__, source_version)
    return error_row(uri, stage, reason_for(stage, exc), describe(exc), source_version)
