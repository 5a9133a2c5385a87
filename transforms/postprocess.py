"""After RunInference: model logits -> top-k prediction rows; failed inference batches ->
error rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np

from transforms import metrics
from transforms import vocabulary as v
from transforms.rows import SOURCE_VERSION, error_row, utc_now
from transforms.storage.listing import Work


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over a 1-D logit vector; the k best class ids (best first) and probabilities."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max())
    probs = exp / exp.sum()
    best = best_first(probs, k)
    return best.astype(np.int32), probs[best].astype(np.float32)


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
    labelled."""

    def __init__(self, labels: Sequence[str], k: int, model: str):
        self._labels = list(labels)
        self._k = k
        self._model = model

    def process(self, element):
        work, result = element
        for row in prediction_rows(work, result.inference, self._labels, self._k, self._model):
            metrics.count_labelled()
            yield row


def failed_batch_rows(failure) -> Iterable[dict]:
    """RunInference's dead letter (batch of (work, image), exception info) -> a row per
    input."""
    batch, (exc_type, _, trace) = failure
    # The traceback's last line reads "ExceptionType: message", the form error rows carry.
    error = trace[-1].strip() if trace else exc_type.__name__
    for work, _ in batch:
        for item in work:
            row = error_row(item.uri, v.INFERENCE, v.MODEL_FAILED, error, item.version)
            metrics.count_failure(row)
            yield row
