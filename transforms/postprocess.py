"""After RunInference: model logits -> top-k prediction rows; failed inference batches ->
error rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import apache_beam as beam
import numpy as np

from transforms import metrics
from transforms import vocabulary as v
from transforms.rows import error_row, utc_now


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


def prediction_row(uri: str, logits: np.ndarray, labels: Sequence[str], k: int, model: str) -> dict:
    ids, scores = top_k(logits, k)
    class_ids = ids.tolist()
    return {
        "uri": uri,
        "class_ids": class_ids,
        "labels": [labels[i] for i in class_ids],
        "scores": scores.tolist(),
        "model": model,
        "processed_at": utc_now(),
    }


class ToPredictionRow(beam.DoFn):
    """(uri, PredictionResult) -> prediction row, counted as labelled."""

    def __init__(self, labels: Sequence[str], k: int, model: str):
        self._labels = list(labels)
        self._k = k
        self._model = model

    def process(self, element):
        uri, result = element
        metrics.count_labelled()
        yield prediction_row(uri, result.inference, self._labels, self._k, self._model)


def failed_batch_rows(failure) -> Iterable[dict]:
    """RunInference's dead letter (batch of (uri, image), exception info) -> a row per URI."""
    batch, (exc_type, _, trace) = failure
    # The traceback's last line reads "ExceptionType: message", the form error rows carry.
    error = trace[-1].strip() if trace else exc_type.__name__
    for uri, _ in batch:
        row = error_row(uri, v.INFERENCE, v.MODEL_FAILED, error)
        metrics.count_failure(row)
        yield row
