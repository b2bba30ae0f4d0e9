"""Top-K accuracy metrics, one convention for every model and baseline.

Inputs, always the same:
- `ranked`: int array (n_users, K) of item indices, best first; -1 pads short lists.
- `relevant`: scipy CSR matrix (n_users, n_items), non-zero where the item is a test positive.

Each function returns one value per user (so the paired bootstrap can resample users);
`mean_over_users` averages over users with at least one positive, as docs/evaluation.md defines.
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
    return _recall(hits_matrix(ranked[:, :k], relevant), n_relevant(relevant), k)


def capped_recall_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Liang et al. (2018) recall: hits in top-K / min(K, number of test positives)."""
    return _capped_recall(hits_matrix(ranked[:, :k], relevant), n_relevant(relevant), k)


def precision_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    return _precision(hits_matrix(ranked[:, :k], relevant), n_relevant(relevant), k)


def hit_rate_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    return _hit_rate(hits_matrix(ranked[:, :k], relevant), n_relevant(relevant), k)


def ndcg_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Binary-gain NDCG; the ideal DCG places min(K, |positives|) hits at the top."""
    return _ndcg(hits_matrix(ranked[:, :k], relevant), n_relevant(relevant), k)


def mrr_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    return _mrr(hits_matrix(ranked[:, :k], relevant), n_relevant(relevant), k)


def map_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Mean average precision, normalised by min(K, |positives|)."""
    return _map(hits_matrix(ranked[:, :k], relevant), n_relevant(relevant), k)


# Each metric from the hits of the longest list: hits[:, :k] is what hits_matrix(ranked[:, :k])
# returns, so every K (and every curve point) reuses one membership search.


def _recall(hits: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    return _safe_divide(hits[:, :k].sum(axis=1), positives)


def _capped_recall(hits: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    return _safe_divide(hits[:, :k].sum(axis=1), np.minimum(k, positives))


def _precision(hits: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].sum(axis=1) / float(k)


def _hit_rate(hits: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    return hits[:, :k].any(axis=1).astype(float)


def _ndcg(hits: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    hits = hits[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal_hits = np.minimum(k, positives)
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    return _safe_divide(dcg, ideal_cumulative[ideal_hits])


def _mrr(hits: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    hits = hits[:, :k]
    first = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0)
    return np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)


def _map(hits: np.ndarray, positives: np.ndarray, k: int) -> np.ndarray:
    hits = hits[:, :k]
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    summed = (precision_at_rank * hits).sum(axis=1)
    return _safe_divide(summed, np.minimum(k, positives))


ACCURACY_METRICS = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "capped_recall": capped_recall_at_k,
    "precision": precision_at_k,
    "hit_rate": hit_rate_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
}
_FROM_HITS = {
    "recall": _recall,
    "ndcg": _ndcg,
    "capped_recall": _capped_recall,
    "precision": _precision,
    "hit_rate": _hit_rate,
    "mrr": _mrr,
    "map": _map,
}


def per_user_metrics(
    ranked: np.ndarray,
    relevant: sp.csr_matrix,
    ks: tuple[int, ...] | list[int],
    names: tuple[str, ...] | None = None,
) -> dict[str, np.ndarray]:
    """Every accuracy metric (or those in `names`) at every K, per user: keys like `recall@20`.

    One membership search for the largest K serves every K (`metrics_from_hits`): the same
    values as the `*_at_k` functions, without a search per metric and K.
    """
    if not ks:
        return {}
    hits = hits_matrix(np.asarray(ranked)[:, : max(ks)], relevant)
    return metrics_from_hits(hits, n_relevant(relevant), ks, names)


def metrics_from_hits(
    hits: np.ndarray,
    positives: np.ndarray,
    ks: tuple[int, ...] | list[int],
    names: tuple[str, ...] | None = None,
) -> dict[str, np.ndarray]:
    """`per_user_metrics` from `hits_matrix` of lists at least max(ks) long (or all there is)
    and `n_relevant`: callers that need several sets of K search once."""
    return {
        f"{name}@{k}": _FROM_HITS[name](hits, positives, k)
        for k in ks
        for name in (ACCURACY_METRICS if names is None else names)
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
    scores = np.asarray(scores)
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    if k == 0 or n_rows == 0:
        return np.full((n_rows, k), -1, dtype=np.int64)
    dtype = scores.dtype if scores.dtype in (np.float32, np.float64) else np.float64
    if scores.dtype == np.float16:
        dtype = np.dtype(np.float32)  # same order, and the block reductions are faster
    block = padded_score_block(n_rows, n_items, k, dtype)
    np.copyto(block[:, :n_items], scores, casting="unsafe")
    if excluded is not None:
        excluded = sp.csr_matrix(excluded)
        mask_rows(block, excluded.indptr, excluded.indices)
    return top_k_padded(block, n_items, k)


def group_size(n_items: int, k: int) -> int:
    """Items per group of the top-k prefilter: about 8k groups or more, at most 16 items each
    (larger groups admit more candidates; bench/evaluation_speed.py on Gowalla)."""
    return int(min(16, max(1, n_items // (8 * max(k, 1)))))


def padded_score_block(n_rows: int, n_items: int, k: int, dtype: np.dtype) -> np.ndarray:
    """A (n_rows, groups * group size) block whose columns past n_items hold -inf."""
    size = group_size(n_items, k)
    width = -(-n_items // size) * size
    block = np.empty((n_rows, width), dtype=dtype)
    block[:, n_items:] = -np.inf
    return block


def mask_rows(block: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> None:
    """Set block[i, indices[indptr[i]:indptr[i + 1]]] to -inf, straight from CSR arrays."""
    first, last = int(indptr[0]), int(indptr[len(block)])
    if last == first:
        return
    rows = np.repeat(np.arange(len(block), dtype=np.int64), np.diff(indptr[: len(block) + 1]))
    flat = block.reshape(-1)
    flat[rows * block.shape[1] + indices[first:last]] = -np.inf


def top_k_padded(block: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """Exact top-k of each row of a padded score block (modified: NaN become -inf).

    Items are cut into groups (item j in group j mod groups); the k-th largest group maximum is
    a lower bound of the k-th largest score (k groups each hold a score at least that high), so
    every item at or above the row's k-th score, ties included, lies in a group whose maximum
    reaches the bound. Only those groups are gathered and ranked: one pass over the block
    instead of a partition of it. Rows whose bound admits most groups (massive ties, few finite
    scores) are ranked whole.
    """
    n_rows, width = block.shape
    size = group_size(n_items, k)
    groups = width // size
    if size < 2 or groups <= k:
        return _rank_dense(block, np.arange(n_rows), n_items, k)
    maxima = block.reshape(n_rows, size, groups).max(axis=1)
    with_nan = np.flatnonzero(np.isnan(maxima).any(axis=1))
    if with_nan.size:  # max propagates NaN: only rows holding one are cleaned
        rows = block[with_nan]
        rows[np.isnan(rows)] = -np.inf
        block[with_nan] = rows
        maxima[with_nan] = rows.reshape(len(with_nan), size, groups).max(axis=1)
    bound = np.partition(maxima, groups - k, axis=1)[:, groups - k : groups - k + 1]
    candidate = maxima >= bound
    counts = candidate.sum(axis=1)
    wide = counts * 4 > groups
    ranked = np.empty((n_rows, k), dtype=np.int64)
    if wide.any():
        ranked[wide] = _rank_dense(block, np.flatnonzero(wide), n_items, k)
    narrow = np.flatnonzero(~wide)
    if narrow.size:
        rows, chosen = np.nonzero(candidate[narrow])
        narrow_counts = counts[narrow]
        slot = _positions_in_rows(narrow_counts)
        width_chosen = int(narrow_counts.max())
        chosen_groups = np.zeros((narrow.size, width_chosen), dtype=np.int64)
        chosen_groups[rows, slot] = chosen
        filled = np.zeros((narrow.size, width_chosen), dtype=bool)
        filled[rows, slot] = True
        # Item j * groups + g for offset j (outer) and chosen group g (inner): ascending items.
        offsets = (np.arange(size, dtype=np.int64) * groups)[None, :, None]
        items = (offsets + chosen_groups[:, None, :]).reshape(narrow.size, -1)
        values = block.reshape(-1)[narrow[:, None] * width + items]
        np.copyto(values.reshape(narrow.size, size, -1), -np.inf, where=~filled[:, None, :])
        ranked[narrow] = _rank_candidates(values, items, k)
    return ranked


def _rank_dense(block: np.ndarray, rows: np.ndarray, n_items: int, k: int) -> np.ndarray:
    values = block[rows, :n_items]
    values[np.isnan(values)] = -np.inf
    return _rank_candidates(values, None, k)


def _rank_candidates(values: np.ndarray, items: np.ndarray | None, k: int) -> np.ndarray:
    """Top-k of each row of candidate scores, best first, ties to the lower item, -1 for -inf.

    `items` (None: the column) names each candidate; finite candidates come in ascending
    item order along a row, so among tied scores the first ones are the lowest items.
    """
    n_rows, n_candidates = values.shape
    cut = n_candidates - k
    threshold = np.partition(values, cut, axis=1)[:, cut : cut + 1]
    chosen = values > threshold
    tied = values == threshold
    missing = k - chosen.sum(axis=1)
    n_tied = tied.sum(axis=1)
    exact = missing == n_tied
    chosen[exact] |= tied[exact]
    partial = np.flatnonzero(~exact)
    if partial.size:  # the first `missing` ties of each such row, in bulk
        rows, columns = np.nonzero(tied[partial])
        counts = n_tied[partial]
        keep = _positions_in_rows(counts) < missing[partial][rows]
        chosen[partial[rows[keep]], columns[keep]] = True
    columns = np.nonzero(chosen)[1].reshape(n_rows, k)
    chosen_scores = np.take_along_axis(values, columns, axis=1)
    chosen_items = columns if items is None else np.take_along_axis(items, columns, axis=1)
    order = np.lexsort((chosen_items, -chosen_scores), axis=1)
    top = np.take_along_axis(chosen_items, order, axis=1)
    top_scores = np.take_along_axis(chosen_scores, order, axis=1)
    return np.where(np.isfinite(top_scores), top, -1)


def _positions_in_rows(counts: np.ndarray) -> np.ndarray:
    """0, 1, ... within each row of row-major nonzero() output, given the counts per row."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)
