"""Top-K accuracy metrics, one convention for every model and baseline.

Inputs, always the same:
- `ranked`: int array (n_users, K) of item indices, best first; -1 pads short lists.
- `relevant`: scipy CSR matrix (n_users, n_items), non-zero where the item is a test positive.

Each function returns one value per user (so the paired bootstrap can resample users);
`mean_over_users` averages over users with at least one positive, as EVALUATION.md defines.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def hits_matrix(ranked: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean (n_users, K): whether the item at each rank is relevant for that user."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.shape[0] != relevant.shape[0]:
        raise ValueError(
            f"ranked has shape {ranked.shape}, relevant {relevant.shape}: "
            "expected one row of ranked items per user"
        )
    relevant = sp.csr_matrix(relevant)
    relevant.sort_indices()
    hits = np.zeros(ranked.shape, dtype=bool)
    valid = ranked >= 0
    rows = np.broadcast_to(np.arange(ranked.shape[0])[:, None], ranked.shape)
    starts = relevant.indptr[rows[valid]]
    ends = relevant.indptr[rows[valid] + 1]
    items = ranked[valid]
    # Binary search of each ranked item inside its user's sorted positive indices.
    position = _searchsorted_segments(relevant.indices, starts, ends, items)
    found = position < ends
    found[found] = relevant.indices[position[found]] == items[found]
    hits[valid] = found
    return hits


def _searchsorted_segments(
    sorted_values: np.ndarray, starts: np.ndarray, ends: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """Vectorised lower-bound search of each target inside sorted_values[start:end]."""
    low = starts.astype(np.int64).copy()
    high = ends.astype(np.int64).copy()
    while True:
        active = low < high
        if not active.any():
            return low
        middle = (low + high) // 2
        safe_middle = np.where(active, middle, 0)
        go_right = active & (sorted_values[safe_middle] < targets)
        low = np.where(go_right, middle + 1, low)
        high = np.where(active & ~go_right, middle, high)


def n_relevant(relevant: sp.csr_matrix) -> np.ndarray:
    return np.diff(sp.csr_matrix(relevant).indptr)


def recall_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """LightGCN/BARS recall: hits in top-K / number of test positives."""
    hits = hits_matrix(ranked[:, :k], relevant).sum(axis=1)
    return _safe_divide(hits, n_relevant(relevant))


def capped_recall_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Liang et al. (2018) recall: hits in top-K / min(K, number of test positives)."""
    hits = hits_matrix(ranked[:, :k], relevant).sum(axis=1)
    return _safe_divide(hits, np.minimum(k, n_relevant(relevant)))


def precision_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    hits = hits_matrix(ranked[:, :k], relevant).sum(axis=1)
    return hits / float(k)


def hit_rate_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    return hits_matrix(ranked[:, :k], relevant).any(axis=1).astype(float)


def ndcg_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Binary-gain NDCG; the ideal DCG places min(K, |positives|) hits at the top."""
    hits = hits_matrix(ranked[:, :k], relevant)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal_hits = np.minimum(k, n_relevant(relevant))
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    return _safe_divide(dcg, ideal_cumulative[ideal_hits])


def mrr_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    hits = hits_matrix(ranked[:, :k], relevant)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    return np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)


def map_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Mean average precision, normalised by min(K, |positives|)."""
    hits = hits_matrix(ranked[:, :k], relevant)
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    summed = (precision_at_rank * hits).sum(axis=1)
    return _safe_divide(summed, np.minimum(k, n_relevant(relevant)))


ACCURACY_METRICS = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "capped_recall": capped_recall_at_k,
    "precision": precision_at_k,
    "hit_rate": hit_rate_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
}


def per_user_metrics(
    ranked: np.ndarray, relevant: sp.csr_matrix, ks: tuple[int, ...] | list[int]
) -> dict[str, np.ndarray]:
    """Every accuracy metric at every K, per user: keys like `recall@20`."""
    return {
        f"{name}@{k}": function(ranked, relevant, k)
        for k in ks
        for name, function in ACCURACY_METRICS.items()
    }


def mean_over_users(values: np.ndarray, relevant: sp.csr_matrix) -> float:
    """Average over users that have at least one positive."""
    evaluated = n_relevant(relevant) > 0
    if not evaluated.any():
        raise ValueError("no user has a test positive: nothing to evaluate")
    return float(np.asarray(values)[evaluated].mean())


def top_k_from_scores(
    scores: np.ndarray, k: int, excluded: sp.csr_matrix | None = None
) -> np.ndarray:
    """Top-K item indices per row of a dense score matrix, best first, -1 padded.

    Masked (`excluded`) and -inf items are never returned; ties go to the lower item index.
    """
    if excluded is not None and excluded.nnz:
        scores = np.array(scores, dtype=np.float64, copy=True)
        coo = sp.coo_matrix(excluded)
        scores[coo.row, coo.col] = -np.inf
    scores = np.where(np.isnan(scores), -np.inf, scores)
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if k == 0 or n_rows == 0:
        return np.full((n_rows, k), -1, dtype=np.int64)
    # Exact tie-breaking (lower index first) whatever argpartition picks: take everything
    # strictly above each row's k-th score, then fill with the lowest-index ties.
    threshold = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    chosen = scores > threshold
    tied = scores == threshold
    missing = k - chosen.sum(axis=1)
    n_tied = tied.sum(axis=1)
    exact = missing == n_tied
    chosen[exact] |= tied[exact]
    for row in np.flatnonzero(~exact):  # rare with real-valued scores, cheap otherwise
        chosen[row, np.flatnonzero(tied[row])[: missing[row]]] = True
    columns = np.nonzero(chosen)[1].reshape(n_rows, k)
    chosen_scores = np.take_along_axis(scores, columns, axis=1)
    order = np.lexsort((columns, -chosen_scores), axis=1)
    top = np.take_along_axis(columns, order, axis=1)
    top_scores = np.take_along_axis(chosen_scores, order, axis=1)
    return np.where(np.isfinite(top_scores), top, -1)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
