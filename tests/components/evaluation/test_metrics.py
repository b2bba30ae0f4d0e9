import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from components.evaluation import metrics as m


def _relevant(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items))
    for user, items in enumerate(rows):
        dense[user, items] = 1
    return sp.csr_matrix(dense)


RANKED = np.array([[1, 2, 3], [0, -1, -1], [4, 3, 2]])
RELEVANT = _relevant([[1, 3, 4], [0], []], 5)


def test_recall_divides_hits_by_all_positives():
    np.testing.assert_allclose(m.recall_at_k(RANKED, RELEVANT, 3), [2 / 3, 1.0, 0.0])
    np.testing.assert_allclose(m.recall_at_k(RANKED, RELEVANT, 1), [1 / 3, 1.0, 0.0])


def test_capped_recall_divides_by_min_k_and_positives():
    np.testing.assert_allclose(m.capped_recall_at_k(RANKED, RELEVANT, 1), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(m.capped_recall_at_k(RANKED, RELEVANT, 2), [0.5, 1.0, 0.0])


def test_ndcg_hand_computed():
    # user 0: hits at ranks 1 and 3 -> DCG = 1 + 1/log2(4); ideal over 3 hits.
    expected = (1 + 0.5) / (1 + 1 / np.log2(3) + 0.5)
    np.testing.assert_allclose(m.ndcg_at_k(RANKED, RELEVANT, 3), [expected, 1.0, 0.0])


def test_map_mrr_precision_hit_rate_hand_computed():
    np.testing.assert_allclose(m.map_at_k(RANKED, RELEVANT, 3), [(1 + 2 / 3) / 3, 1.0, 0.0])
    np.testing.assert_allclose(m.mrr_at_k(RANKED, RELEVANT, 3), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(m.precision_at_k(RANKED, RELEVANT, 3), [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(m.hit_rate_at_k(RANKED, RELEVANT, 3), [1.0, 1.0, 0.0])


def test_mean_over_users_skips_users_without_positives():
    values = m.recall_at_k(RANKED, RELEVANT, 3)
    assert m.mean_over_users(values, RELEVANT) == pytest.approx((2 / 3 + 1) / 2)


def test_mean_over_users_refuses_an_empty_evaluation():
    with pytest.raises(ValueError, match="no user has a test positive"):
        m.mean_over_users(np.zeros(1), _relevant([[]], 3))


def test_top_k_masks_excluded_and_breaks_ties_by_index():
    scores = np.array([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    excluded = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0]]))
    np.testing.assert_array_equal(m.top_k_from_scores(scores, 3, excluded), [[0, 2, 3], [0, 1, 2]])
    scores[0, :] = -np.inf
    assert (m.top_k_from_scores(scores, 2)[0] == -1).all()


def _reference(ranked: np.ndarray, relevant: list[set[int]], k: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"recall": [], "ndcg": [], "map": [], "mrr": []}
    for row, positives in zip(ranked, relevant, strict=True):
        hits = [1.0 if i >= 0 and i in positives else 0.0 for i in row[:k]]
        n = len(positives)
        out["recall"].append(sum(hits) / n if n else 0.0)
        dcg = sum(h / np.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / np.log2(r + 2) for r in range(min(k, n)))
        out["ndcg"].append(dcg / idcg if n else 0.0)
        precisions = [sum(hits[: r + 1]) / (r + 1) for r, h in enumerate(hits) if h]
        out["map"].append(sum(precisions) / min(k, n) if n else 0.0)
        first = next((r for r, h in enumerate(hits) if h), None)
        out["mrr"].append(0.0 if first is None else 1 / (first + 1))
    return out


@settings(max_examples=60, deadline=None)
@given(
    n_users=st.integers(1, 8),
    n_items=st.integers(2, 30),
    k=st.integers(1, 12),
    seed=st.integers(0, 10_000),
)
def test_metrics_match_a_straightforward_reference(n_users, n_items, k, seed):
    rng = np.random.default_rng(seed)
    ranked = np.stack([rng.permutation(n_items)[: min(k, n_items)] for _ in range(n_users)])
    ranked[rng.random(ranked.shape) < 0.1] = -1  # -1 marks an empty slot, never a hit
    positives = [
        set(rng.choice(n_items, rng.integers(0, n_items), replace=False)) for _ in range(n_users)
    ]
    relevant = _relevant([sorted(p) for p in positives], n_items)
    reference = _reference(ranked, positives, k)
    np.testing.assert_allclose(m.recall_at_k(ranked, relevant, k), reference["recall"])
    np.testing.assert_allclose(m.ndcg_at_k(ranked, relevant, k), reference["ndcg"])
    np.testing.assert_allclose(m.map_at_k(ranked, relevant, k), reference["map"])
    np.testing.assert_allclose(m.mrr_at_k(ranked, relevant, k), reference["mrr"])


@settings(max_examples=60, deadline=None)
@given(n_items=st.integers(1, 40), k=st.integers(1, 45), seed=st.integers(0, 10_000))
def test_top_k_equals_a_full_stable_sort_even_with_many_ties(n_items, k, seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(5, n_items)).astype(float)  # heavy ties
    scores[rng.random(scores.shape) < 0.2] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, n_items)]
    expected_scores = np.take_along_axis(scores, expected, axis=1)
    expected = np.where(np.isfinite(expected_scores), expected, -1)
    np.testing.assert_array_equal(m.top_k_from_scores(scores, k), expected)
    # A longer list starts with the shorter one: metrics at K do not depend on max K.
    longer = m.top_k_from_scores(scores, k + 5)
    np.testing.assert_array_equal(longer[:, : min(k, n_items)], expected)
