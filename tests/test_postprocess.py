"""top-k and row building, against a plain sort of an independently computed softmax."""

import numpy as np
import pytest

from transforms import vocabulary as v
from transforms.postprocess import TopK, best_first, prediction_rows, top_k
from transforms.storage.listing import Listed


def reference_softmax(logits):
    e = np.exp(np.asarray(logits, dtype=np.float64))
    return e / e.sum()


def expected_top(logits, k):
    """Plain Python sort of an independent softmax, best first, ties by class id."""
    probs = reference_softmax(logits)
    best = sorted(range(len(probs)), key=lambda i: (-probs[i], i))[:k]
    return best, probs[best]


@pytest.mark.parametrize("seed", range(5))
def test_top_k_matches_a_full_sort_for_each_image_of_a_batch(seed):
    batch = np.random.default_rng(seed).normal(0, 3, (7, 1000)).astype(np.float32)
    results = top_k(batch, 5)
    assert len(results) == 7
    for logits, result in zip(batch, results, strict=True):
        ids, probs = expected_top(logits, 5)
        assert isinstance(result, TopK)
        assert result.class_ids == ids
        np.testing.assert_allclose(result.scores, probs, rtol=1e-5)
        # Each score is a float32 value (the Parquet column's type), as a Python float.
        assert result.scores == np.float32(result.scores).tolist()


def test_top_k_is_stable_for_large_logits_and_ties():
    logits = np.zeros((2, 10), np.float32)
    logits[0, [7, 3]] = 1000.0  # would overflow a naive exp
    logits[1, [9, 1, 4]] = -2.0
    first, second = top_k(logits, 3)
    assert first.class_ids == [3, 7, 0]
    np.testing.assert_allclose(first.scores[:2], [0.5, 0.5])
    assert second.class_ids == [0, 2, 3]


def test_k_larger_than_classes_returns_all():
    (result,) = top_k(np.array([[0.0, 2.0, 1.0]]), 10)
    assert result.class_ids == [1, 2, 0]


def test_images_whose_logits_give_no_probabilities_are_errors_alone():
    rng = np.random.default_rng(3)
    batch = rng.normal(0, 3, (5, 100))
    batch[1, 4] = np.nan
    batch[3, :] = -np.inf  # every class impossible
    batch[4, [0, 9]] = np.inf
    results = top_k(batch, 3)
    for i in (0, 2):
        assert results[i].class_ids == expected_top(batch[i], 3)[0]
    for i, counted in ((1, "1 NaN"), (3, "100 -Inf"), (4, "2 +Inf")):
        assert isinstance(results[i], v.ImageError) and results[i].reason == v.NON_FINITE
        assert f"logits for this image hold {counted}" in str(results[i])


def test_prediction_rows_name_labels_one_row_per_input_of_identical_content():
    labels = ["a", "b", "c"]
    work = (Listed("gs://b/x.jpg", 3, "17", "crc32c:A"), Listed("gs://b/y.jpg", 3, "9", "crc32c:A"))
    (best,) = top_k(np.array([[0.0, 5.0, 1.0]]), 2)
    rows = prediction_rows(work, best, labels, "m")
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
def test_best_first_is_a_stable_descending_sort_of_each_row(seed):
    rng = np.random.default_rng(seed)
    # Few distinct values, so ties straddle the k-th place, differently in each row.
    values = rng.integers(0, 6, size=(seed % 4 + 1, 50)).astype(np.float64)
    for k in (1, 3, 10, 49, 50, 60):
        found = best_first(values, k)
        assert found.shape == (len(values), min(k, 50))
        for row, best in zip(values, found, strict=True):
            # Oracle: a plain Python sort, largest first, ties by index.
            order = sorted(range(len(row)), key=lambda i: (-row[i], i))
            assert best.tolist() == order[:k]
