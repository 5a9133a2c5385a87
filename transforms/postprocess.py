"""Stage 4: model logits -> top-k prediction rows; failed inference batches -> error rows."""

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
    # Highest probability first; equal probabilities in class-id order.
    best = np.argsort(-probs, kind="stable")[:k]
    return best.astype(np.int32), probs[best].astype(np.float32)


def prediction_row(uri: str, logits: np.ndarray, labels: Sequence[str], k: int, model: str) -> dict:
    ids, scores = top_k(logits, k)
    return {
        "uri": uri,
        "class_ids": ids.tolist(),
        "labels": [labels[i] for i in ids],
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
