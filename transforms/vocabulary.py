"""The project's words, in one place: pipeline stages, output kinds, and the small set of
error reasons an error row carries (README "What happens to bad input" lists them)."""

from __future__ import annotations

from collections.abc import Iterator

# Stages an image passes through; an error row names the one that failed.
READ, DECODE, INFERENCE = "read", "decode", "inference"
STAGES = (READ, DECODE, INFERENCE)

# Output kinds: ROOT/<kind>/date=D/part-*.parquet; ERRORS is also the tag of error rows.
PREDICTIONS, ERRORS = "predictions", "errors"
KINDS = (PREDICTIONS, ERRORS)

# Error reasons, by the stage that can give them.
NOT_FOUND = "not found"
NO_ACCESS = "no access"
NOT_A_FILE = "not a regular file"  # a folder, FIFO, device or socket
TOO_LARGE = "too large"  # bigger than --max_object_mb
READ_FAILED = "read failed"  # any other storage fault, after the client's retries
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"  # unknown or unsupported format
CORRUPT = "corrupt image"  # truncated or undecodable pixel data
TOO_MANY_PIXELS = "too many pixels"  # a decompression bomb, refused from the header
MODEL_FAILED = "model failed"
NON_FINITE = "non-finite scores"  # NaN or infinite logits: no probability distribution

REASONS = {
    READ: (NOT_FOUND, NO_ACCESS, NOT_A_FILE, TOO_LARGE, READ_FAILED),
    DECODE: (EMPTY, NOT_AN_IMAGE, CORRUPT, TOO_MANY_PIXELS),
    INFERENCE: (MODEL_FAILED, NON_FINITE),
}

# Reasons a later run may cure, so its error row counts as done only once --max_attempts rows
# of its (URI, source version, model version) say it failed (transforms/done.py): the storage
# or the worker failed, not the content. NOT_FOUND is final: the version that was listed is
# gone for good (a gs:// generation never comes back; a file made again has a new
# size:mtime), and a listing that finds it again gives a new version, labelled as changed.
RETRYABLE = frozenset({NO_ACCESS, READ_FAILED, MODEL_FAILED})
# What the content is, or one version's fate: the same bytes fail the same way again.
FINAL = frozenset(reason for reasons in REASONS.values() for reason in reasons) - RETRYABLE

# Storage exceptions by class name (local, Beam and Google clients), so this module needs
# none of those libraries.
_READ_REASONS_BY_TYPE = {
    "FileNotFoundError": NOT_FOUND,
    "NotFound": NOT_FOUND,
    "PermissionError": NO_ACCESS,
    "Forbidden": NO_ACCESS,
    "Unauthorized": NO_ACCESS,
    "IsADirectoryError": NOT_A_FILE,
    # A stored checksum not matched: retries.ChecksumMismatch from the job's reader, and
    # DataCorruption from google-cloud-storage's download (tests/test_gcs_contract.py).
    "ChecksumMismatch": READ_FAILED,
    "DataCorruption": READ_FAILED,
}


class ImageError(ValueError):
    """An input this job cannot label, for a known reason (one of REASONS)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, then the exceptions it was raised from or while handling, outermost first; each
    once, so a cycle ends."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def reason_for(stage: str, exc: BaseException) -> str:
    """The reason an error row of `stage` carries for `exc` (a read's: from the first
    exception of its chain whose type says one)."""
    if isinstance(exc, ImageError):
        return exc.reason
    if stage == READ:
        for link in exception_chain(exc):
            if isinstance(link, ImageError):
                return link.reason
            for cls in type(link).__mro__:
                if cls.__name__ in _READ_REASONS_BY_TYPE:
                    return _READ_REASONS_BY_TYPE[cls.__name__]
        return READ_FAILED
    if stage == DECODE:
        return CORRUPT
    return MODEL_FAILED
