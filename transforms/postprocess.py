"""A batch's logits -> each image's top k (in the model handler, a batch at once); after
RunInference: top k -> prediction rows; failed inference batches -> error rows."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from transforms import metrics
from transforms import vocabulary as v
from transforms.rows import SOURCE_VERSION, error_row, failure_row, utc_now
from transforms.storage.listing import Work


def labelling_id(labels: Sequence[str], k: int) -> str:
    """Which labels a prediction row keeps, in its `labelling` column: --top_k and a digest
    of the class names in output order ('top_k=5 labels=sha256:3a0c...'), the file's name
    aside (a copy elsewhere is the same labelling)."""
    digest = hashlib.sha256("\n".join(labels).encode()).hexdigest()
    return f"top_k={k} labels=sha256:{digest[:16]}"


class TopK(NamedTuple):
    """An image's k best classes, best first, and their probabilities (the softmax of its
    logits), as the Python values a prediction row holds."""

    class_ids: list[int]
    scores: list[float]


def top_k(logits: np.ndarray, k: int) -> list[TopK | v.ImageError]:
    """Softmax over each row of a batch's logits [images, classes] -> each image's TopK, or the
    error for a row that gives no probability distribution (non_finite). One pass of numpy
    over the whole batch (the model handler calls it on each batch it labels), in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    with np.errstate(all="ignore"):  # NaN and infinities are checked below
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
    finite = np.isfinite(probs).all(axis=1)  # not so: NaN or +Inf logits, or every one -Inf
    good = probs[finite]
    best = best_first(good, k)
    found = zip(
        best.astype(np.int32).tolist(),
        np.take_along_axis(good, best, axis=1).astype(np.float32).tolist(),
        strict=True,
    )
    return [
        TopK(*next(found)) if ok else non_finite(row)
        for ok, row in zip(finite, logits, strict=True)
    ]


def non_finite(logits: np.ndarray) -> v.ImageError:
    """The error for logits that give no probability distribution; the message counts the
    kinds of bad values, never quoting the scores."""
    counts = (
        (int(np.isnan(logits).sum()), "NaN"),
        (int(np.isposinf(logits).sum()), "+Inf"),
        (int(np.isneginf(logits).sum()), "-Inf"),
    )
    found = ", ".join(f"{n} {what}" for n, what in counts if n)
    return v.ImageError(
        v.NON_FINITE,
        f"the model's {len(logits)} logits for this image hold {found}: no probabilities "
        "(a broken model or weights)",
    )


def best_first(values: np.ndarray, k: int) -> np.ndarray:
    """For each row of finite values [rows, n], the indices of its min(k, n) largest, largest
    first, equal values in index order: what np.argsort(-values, axis=1, kind="stable")[:, :k]
    gives, without sorting all of them."""
    rows, n = values.shape
    if k >= n or rows == 0:
        return np.argsort(-values, axis=1, kind="stable")[:, :k]
    kth = np.partition(values, n - k, axis=1)[:, n - k, None]  # each row's k-th largest
    row, col = np.nonzero(values >= kth)  # the indices that can be in their row's top k
    order = np.lexsort((col, -values[row, col], row))  # by row, value down, index up
    row, col = row[order], col[order]
    place = np.arange(len(row)) - np.searchsorted(row, row)  # within its row, from 0
    return col[place < k].reshape(rows, k)


def prediction_rows(work: Work, best: TopK, labels: Sequence[str], model: str) -> list[dict]:
    """One prediction row per input of the work (inputs of identical content share one
    inference), each with its own URI and source version."""
    names, now = [labels[i] for i in best.class_ids], utc_now()
    return [
        {
            "uri": item.uri,
            "class_ids": best.class_ids,
            "labels": names,
            "scores": best.scores,
            "model": model,
            SOURCE_VERSION: item.version,
            "processed_at": now,
        }
        for item in work
    ]


class ToPredictionRow(beam.DoFn):
    """(work, PredictionResult of its TopK) -> a prediction row per input of the work, each
    counted as labelled (all but the one read also as served by an identical image); scores
    that are not finite (an ImageError for a result) -> an error row per input, tagged ERRORS
    (stage inference), each counted as failed."""

    def __init__(self, labels: Sequence[str], model: str):
        self._labels = list(labels)
        self._model = model

    def process(self, element):
        work, result = element
        if isinstance(result.inference, v.ImageError):  # non-finite scores: counted as failed
            for item in work:
                error = failure_row(item.uri, v.INFERENCE, result.inference, item.version)
                metrics.count_failure(error)
                yield beam.pvalue.TaggedOutput(v.ERRORS, error)
            return
        rows = prediction_rows(work, result.inference, self._labels, self._model)
        metrics.images_identical.inc(len(rows) - 1)
        for row in rows:
            metrics.count_labelled()
            yield row


# TensorFlow's assertion text: the model's own message in the first brackets, then tensor
# values (computed from the images) in the next ones.
_ASSERTION = re.compile(r"assertion failed: \[([^\]]*)\]")
MAX_DETAIL = 200


def inference_error(exc_type: type, trace: Sequence[str]) -> str:
    """'ExceptionType: detail' for a failed batch: the first line of the exception's message
    (for a TensorFlow assertion, the model's own message), never the tensor values TensorFlow
    prints after it, which come from the images."""
    last = trace[-1].strip() if trace else ""
    message = last.split(": ", 1)[1] if ": " in last else ""
    found = _ASSERTION.search(message)
    if found:
        detail = f"assertion failed: {found[1].strip()}"
    else:
        detail = next((line.strip() for line in message.splitlines() if line.strip()), "")
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    return f"{exc_type.__name__}: {detail}" if detail else exc_type.__name__


def failed_batch_rows(failure) -> Iterable[dict]:
    """RunInference's dead letter (batch of (work, image), exception info) -> a row per
    input."""
    batch, (exc_type, _, trace) = failure
    error = inference_error(exc_type, trace)
    for work, _ in batch:
        for item in work:
            row = error_row(item.uri, v.INFERENCE, v.MODEL_FAILED, error, item.version)
            metrics.count_failure(row)
            yield row
