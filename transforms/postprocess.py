"""After RunInference: model logits -> top-k prediction rows; failed inference batches ->
error rows."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

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


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over a 1-D logit vector; the k best class ids (best first) and probabilities."""
    logits = np.asarray(logits, dtype=np.float64)
    with np.errstate(all="ignore"):  # NaN and infinities are checked below
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
    if not np.isfinite(probs).all():  # NaN or +Inf logits, or every one -Inf
        raise non_finite(logits)
    best = best_first(probs, k)
    return best.astype(np.int32), probs[best].astype(np.float32)


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
    """Indices of the k largest values, largest first, equal values in index order: what
    np.argsort(-values, kind="stable")[:k] gives, without sorting all of them."""
    n = len(values)
    if k < n:
        kth = np.partition(values, n - k)[n - k]  # the k-th largest value
        candidates = np.flatnonzero(values >= kth)  # every index that can be in the top k
        if len(candidates) >= k:  # fewer only with NaNs: then the full sort decides
            order = np.argsort(-values[candidates], kind="stable")[:k]
            return candidates[order]
    return np.argsort(-values, kind="stable")[:k]


def prediction_rows(
    work: Work, logits: np.ndarray, labels: Sequence[str], k: int, model: str
) -> list[dict]:
    """One prediction row per input of the work (inputs of identical content share one
    inference), each with its own URI and source version."""
    ids, scores = top_k(logits, k)
    class_ids = ids.tolist()
    names, probs, now = [labels[i] for i in class_ids], scores.tolist(), utc_now()
    return [
        {
            "uri": item.uri,
            "class_ids": class_ids,
            "labels": names,
            "scores": probs,
            "model": model,
            SOURCE_VERSION: item.version,
            "processed_at": now,
        }
        for item in work
    ]


class ToPredictionRow(beam.DoFn):
    """(work, PredictionResult) -> a prediction row per input of the work, each counted as
    labelled (all but the one read also as served by an identical image); scores that are
    not finite -> an error row per input, tagged ERRORS (stage inference), each counted as
    failed."""

    def __init__(self, labels: Sequence[str], k: int, model: str):
        self._labels = list(labels)
        self._k = k
        self._model = model

    def process(self, element):
        work, result = element
        try:
            rows = prediction_rows(work, result.inference, self._labels, self._k, self._model)
        except v.ImageError as e:  # non-finite scores: error rows, counted as failed
            for item in work:
                error = failure_row(item.uri, v.INFERENCE, e, item.version)
                metrics.count_failure(error)
                yield beam.pvalue.TaggedOutput(v.ERRORS, error)
            return
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
