"""top-k and row building, against a plain sort of an independently computed softmax."""

import numpy as np
import pytest

from transforms.postprocess import best_first, prediction_rows, top_k
from transforms.storage.listing import Listed


def reference_softmax(logits):
    e = np.exp(np.asarray(logits, dtype=np.float64))
    return e / e.sum()


@pytest.mark.parametrize("seed", range(5))
def test_top_k_matches_a_full_sort(seed):
    logits = np.random.default_rng(seed).normal(0, 3, 1000).astype(np.float32)
    ids, scores = top_k(logits, 5)
    probs = reference_softmax(logits)
    # Plain Python sort, best first, ties by class id: independent of the code's argsort.
    expected = sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, probs[expected], rtol=1e-5)
    assert ids.dtype == np.int32 and scores.dtype == np.float32


def test_top_k_is_stable_for_large_logits_and_ties():
    logits = np.zeros(10, np.float32)
    logits[[7, 3]] = 1000.0  # would overflow a naive exp
    ids, scores = top_k(logits, 3)
    assert ids.tolist() == [3, 7, 0]
    np.testing.assert_allclose(scores[:2], [0.5, 0.5])


def test_k_larger_than_classes_returns_all():
    ids, _ = top_k(np.array([0.0, 2.0, 1.0]), 10)
    assert ids.tolist() == [1, 2, 0]


def test_prediction_rows_name_labels_one_row_per_input_of_identical_content():
    labels = ["a", "b", "c"]
    work = (Listed("gs://b/x.jpg", 3, "17", "crc32c:A"), Listed("gs://b/y.jpg", 3, "9", "crc32c:A"))
    rows = prediction_rows(work, np.array([0.0, 5.0, 1.0]), labels, 2, "m")
    assert [(r["uri"], r["source_version"]) for r in rows] == [
        ("gs://b/x.jpg", "17"),
        ("gs://b/y.jpg", "9"),
    ]
    for row in rows:
        assert row["model"] == "m"
        assert row["class_ids"] == [1, 2] and row["labels"] == ["b", "c"]
        assert row["processed_at"].tzinfo is not None
        assert sum(reference_softmax([0, 5, 1])[[1, 2]]) == pytest.approx(sum(row["scores"]))


@pytest.mark.parametrize("seed", range(20))
def test_best_first_is_a_stable_descending_sort(seed):
    rng = np.random.default_rng(seed)
    # Few distinct values, so ties straddle the k-th place; NaNs in some.
    values = rng.integers(0, 6, size=50).astype(np.float64)
    if seed % 3 == 0:
        values[rng.integers(0, 50, size=seed % 7 + 1)] = np.nan
    # Oracle: a plain Python sort, largest first, NaNs last, ties by index (the order
    # np.argsort(-values, kind="stable") gives, which the code falls back to: not used here).
    order = sorted(range(len(values)), key=lambda i: (np.isnan(values[i]), -values[i], i))
    for k in (1, 3, 10, 49, 50, 60):
        np.testing.assert_array_equal(best_first(values, k), order[:k])
