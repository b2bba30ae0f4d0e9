"""Beyond-accuracy metrics (docs/evaluation.md): coverage, novelty, diversity, exposure fairness.

Same input convention as `metrics.py`: `ranked` is an int array (n_users, K) of item indices,
best first, with -1 padding short lists; -1 slots are ignored everywhere. Per-item inputs
(`item_popularity`, `category_codes`, `seller_codes`, flags) are indexed by item index.
Everything is vectorised over users, so a full evaluation set costs milliseconds.

Conventions (chosen once, here):
- Per-user values are NaN where the metric is undefined (novelty of an empty list, diversity
  of a list with fewer than two known-category items); report means skip those users.
- Gini: G = sum_i sum_j |x_i - x_j| / (2 n^2 mean) over every entity passed, zeros included;
  0 = equal exposure, (n - 1) / n = everything on one entity.
- Exposure counts list slots, undiscounted, unless `discount=True` asks for 1/log2(rank + 1).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

UNKNOWN = -1
#: Cells of one block of resampled seller exposures held at once (float64): about 32 MB.
_MAX_CELLS = 4_000_000


def _as_ranked(ranked: np.ndarray) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(
            f"ranked has shape {ranked.shape} and dtype {ranked.dtype}: expected an int array "
            "(n_users, K) of item indices, -1 padded"
        )
    return ranked


def _check_item_array(ranked: np.ndarray, values: np.ndarray, name: str) -> np.ndarray:
    """Per-item array that every ranked index can look up."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} has shape {values.shape}: expected one value per item")
    if ranked.size and ranked.max(initial=-1) >= len(values):
        raise ValueError(
            f"ranked holds item index {ranked.max()} but {name} covers only {len(values)} "
            "items: pass one value per item of the catalogue"
        )
    return values


def exposure_counts(ranked: np.ndarray, n_items: int, discount: bool = False) -> np.ndarray:
    """Float exposure per item: list slots it received (or 1/log2(rank + 1) with `discount`)."""
    ranked = _as_ranked(ranked)
    if ranked.size and ranked.max(initial=-1) >= n_items:
        raise ValueError(f"ranked holds item index {ranked.max()} >= n_items={n_items}")
    filled = ranked >= 0
    weights = None
    if discount:
        slot_weight = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
        weights = np.broadcast_to(slot_weight, ranked.shape)[filled]
    return np.bincount(ranked[filled], weights=weights, minlength=n_items).astype(float)


def catalog_coverage(ranked: np.ndarray, n_recommendable: int) -> float:
    """Share of the recommendable catalogue that appears in at least one list."""
    ranked = _as_ranked(ranked)
    if n_recommendable <= 0:
        raise ValueError(f"n_recommendable={n_recommendable}: expected a positive item count")
    distinct = np.count_nonzero(np.bincount(ranked[ranked >= 0]))
    return distinct / n_recommendable


def novelty(ranked: np.ndarray, item_popularity: np.ndarray) -> np.ndarray:
    """Per user, mean self-information -log2(count / total) of the listed items.

    `item_popularity` holds training interaction counts per item. Items never seen in training
    get a floor of one count (the total is not changed), so they are the most novel items
    rather than infinitely novel. Users with an empty list get NaN.
    """
    ranked = _as_ranked(ranked)
    counts = _check_item_array(ranked, item_popularity, "item_popularity").astype(float)
    if (counts < 0).any():
        raise ValueError("item_popularity has negative counts: expected interaction counts")
    total = counts.sum()
    if total <= 0:
        raise ValueError("item_popularity sums to 0: novelty needs training interaction counts")
    self_information = -np.log2(np.maximum(counts, 1.0) / total)
    filled = ranked >= 0
    per_slot = np.where(filled, self_information[np.where(filled, ranked, 0)], 0.0)
    n_filled = filled.sum(axis=1)
    return _divide_or_nan(per_slot.sum(axis=1), n_filled)


def intra_list_diversity(ranked: np.ndarray, category_codes: np.ndarray) -> np.ndarray:
    """Per user, share of pairs of list positions whose items have different categories.

    Slots whose item has an unknown category (code -1) are left out: whether they differ from
    the rest is unknown. Lists with fewer than two known-category items get NaN. Counts come
    from a sparse per-user category histogram: same-category pairs = sum c * (c - 1) / 2.
    """
    ranked = _as_ranked(ranked)
    codes_per_item = _check_item_array(ranked, category_codes, "category_codes").astype(np.int64)
    filled = ranked >= 0
    codes = np.where(filled, codes_per_item[np.where(filled, ranked, 0)], UNKNOWN)
    known = codes >= 0
    n_users = ranked.shape[0]
    n_known = known.sum(axis=1).astype(float)
    n_categories = int(codes.max(initial=UNKNOWN)) + 1
    users = np.broadcast_to(np.arange(n_users, dtype=np.int64)[:, None], codes.shape)
    keys, histogram = np.unique(users[known] * n_categories + codes[known], return_counts=True)
    same_pairs = np.bincount(
        keys // max(n_categories, 1),
        weights=histogram * (histogram - 1) / 2.0,
        minlength=n_users,
    )
    all_pairs = n_known * (n_known - 1) / 2.0
    return _divide_or_nan(all_pairs - same_pairs, all_pairs)


def gini(values: np.ndarray) -> float:
    """Gini coefficient over every entity passed (zeros included); 0 = equal, 1 = concentrated.

    G = sum_i sum_j |x_i - x_j| / (2 n^2 mean), computed from the sorted values in O(n log n).
    An all-zero distribution counts as equal (0.0).
    """
    values = _as_distribution(values)
    total = values.sum()
    if total <= 0:
        return 0.0
    n = values.size
    ascending = np.sort(values)
    weighted = np.dot(np.arange(1, n + 1, dtype=float), ascending)
    return float(max(0.0, 2.0 * weighted / (n * total) - (n + 1) / n))


def lorenz_curve(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative share of entities, cumulative share of exposure), from (0, 0) to (1, 1).

    Entities are sorted from least to most exposed; an all-zero distribution gives the diagonal.
    """
    values = _as_distribution(values)
    n = values.size
    entity_share = np.arange(n + 1, dtype=float) / n
    total = values.sum()
    if total <= 0:
        return entity_share, entity_share.copy()
    exposure_share = np.concatenate([[0.0], np.cumsum(np.sort(values)) / total])
    exposure_share[-1] = 1.0
    return entity_share, exposure_share


def seller_exposure(
    item_exposure: np.ndarray, seller_codes: np.ndarray, n_sellers: int | None = None
) -> np.ndarray:
    """Item exposure summed per seller code; items of an unknown seller (code -1) are left out."""
    item_exposure = np.asarray(item_exposure, dtype=float)
    seller_codes = np.asarray(seller_codes, dtype=np.int64)
    if item_exposure.shape != seller_codes.shape or item_exposure.ndim != 1:
        raise ValueError(
            f"item_exposure {item_exposure.shape} and seller_codes {seller_codes.shape}: "
            "expected one exposure and one seller code per item"
        )
    known = seller_codes >= 0
    minimum = int(seller_codes.max(initial=UNKNOWN)) + 1 if n_sellers is None else n_sellers
    return np.bincount(seller_codes[known], weights=item_exposure[known], minlength=minimum)


def exposure_share(ranked: np.ndarray, flagged: np.ndarray) -> float:
    """Share of filled list slots that go to flagged items (new listings, small sellers).

    NaN when no slot is filled.
    """
    ranked = _as_ranked(ranked)
    flagged = _check_item_array(ranked, flagged, "flagged").astype(bool)
    items = ranked[ranked >= 0]
    if items.size == 0:
        return float("nan")
    return float(flagged[items].mean())


def seller_gini_statistic(
    ranked: np.ndarray, seller_codes: np.ndarray, sellers: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """The seller-exposure Gini of a weighted set of users' lists, for the bootstrap.

    Returns a function of user weights (resamples, n_users) -> one Gini per resample over
    `sellers` (seller codes, zeros included), each user's list slots counted `weight`
    times. With every weight 1 it is `gini(seller_exposure(...)[sellers])`.
    """
    ranked = _as_ranked(ranked)
    codes = _check_item_array(ranked, seller_codes, "seller_codes").astype(np.int64)
    sellers = np.asarray(sellers, dtype=np.int64)
    column = np.full(int(codes.max(initial=UNKNOWN)) + 1, -1, dtype=np.int64)
    column[sellers] = np.arange(sellers.size)
    filled = ranked >= 0
    slot_seller = np.where(filled, codes[np.where(filled, ranked, 0)], UNKNOWN)
    slot_column = np.where(slot_seller >= 0, column[np.maximum(slot_seller, 0)], -1)
    users = np.broadcast_to(np.arange(ranked.shape[0])[:, None], ranked.shape)
    counted = slot_column >= 0
    per_user = sp.csr_matrix(
        (np.ones(int(counted.sum())), (users[counted], slot_column[counted])),
        shape=(ranked.shape[0], max(sellers.size, 1)),
    )
    by_seller = per_user.T.tocsr()

    def statistic(weights: np.ndarray) -> np.ndarray:
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        out = np.empty(weights.shape[0])
        rows = max(1, _MAX_CELLS // max(sellers.size, 1))
        for start in range(0, weights.shape[0], rows):
            block = weights[start : start + rows]
            exposure = np.asarray(by_seller @ block.T).T[:, : sellers.size]
            out[start : start + rows] = gini_rows(exposure)
        return out

    return statistic


def exposure_share_statistic(
    ranked: np.ndarray, flagged: np.ndarray
) -> Callable[[np.ndarray], np.ndarray]:
    """The share of filled list slots on flagged items of a weighted set of users' lists,
    for the bootstrap: user weights (resamples, n_users) -> one share per resample (NaN
    without a filled slot). With every weight 1 it is `exposure_share(ranked, flagged)`."""
    ranked = _as_ranked(ranked)
    flagged = _check_item_array(ranked, flagged, "flagged").astype(bool)
    filled = ranked >= 0
    on_flagged = (filled & flagged[np.where(filled, ranked, 0)]).sum(axis=1).astype(float)
    slots = filled.sum(axis=1).astype(float)

    def statistic(weights: np.ndarray) -> np.ndarray:
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        return _divide_or_nan(weights @ on_flagged, weights @ slots)

    return statistic


def gini_rows(values: np.ndarray) -> np.ndarray:
    """`gini` of each row of a (rows, entities) array of non-negative exposures."""
    values = np.asarray(values, dtype=float)
    n = values.shape[1]
    total = values.sum(axis=1)
    ascending = np.sort(values, axis=1)
    weighted = ascending @ np.arange(1, n + 1, dtype=float)
    out = np.zeros(values.shape[0])
    positive = total > 0
    out[positive] = 2.0 * weighted[positive] / (n * total[positive]) - (n + 1) / n
    return np.maximum(out, 0.0)


def small_seller_item_flags(seller_codes: np.ndarray, max_listings: int) -> np.ndarray:
    """Per item: whether its seller has at most `max_listings` items in `seller_codes`.

    Items of an unknown seller (code -1) are not flagged.
    """
    seller_codes = np.asarray(seller_codes, dtype=np.int64)
    known = seller_codes >= 0
    listings = np.bincount(seller_codes[known])
    flags = np.zeros(seller_codes.shape, dtype=bool)
    flags[known] = listings[seller_codes[known]] <= max_listings
    return flags


def beyond_accuracy_report(
    ranked: np.ndarray,
    *,
    k: int,
    item_popularity: np.ndarray,
    n_recommendable: int | None = None,
    recommendable: np.ndarray | None = None,
    category_codes: np.ndarray | None = None,
    seller_codes: np.ndarray | None = None,
    new_item_flags: np.ndarray | None = None,
    small_seller_flags: np.ndarray | None = None,
) -> dict[str, float]:
    """Every beyond-accuracy metric on the top-k of `ranked`, with stable `name@k` keys.

    `recommendable` (bool per item, default: every item) is the catalogue at the cut-off:
    coverage divides by its size (unless `n_recommendable` is given) and the item Gini runs over
    it (plus any item that was recommended anyway), so items that could not be shown do not
    count as unfairly ignored. The seller Gini runs over sellers with a recommendable item.
    Keys whose input is None (no categories, no sellers, no flags) are left out.
    """
    if k <= 0:
        raise ValueError(f"k={k}: expected a positive list length")
    ranked = _as_ranked(ranked)[:, :k]
    item_popularity = _check_item_array(ranked, item_popularity, "item_popularity")
    n_items = len(item_popularity)
    if recommendable is None:
        recommendable = np.ones(n_items, dtype=bool)
    recommendable = np.asarray(recommendable, dtype=bool)
    if recommendable.shape != (n_items,):
        raise ValueError(
            f"recommendable has shape {recommendable.shape}: expected one flag per item "
            f"({n_items}, as item_popularity)"
        )
    if n_recommendable is None:
        n_recommendable = int(recommendable.sum())
    exposure = exposure_counts(ranked, n_items)
    catalogue = recommendable | (exposure > 0)
    report = {
        f"coverage@{k}": catalog_coverage(ranked, n_recommendable),
        f"novelty@{k}": _nan_mean(novelty(ranked, item_popularity)),
    }
    if category_codes is not None:
        report[f"diversity@{k}"] = _nan_mean(intra_list_diversity(ranked, category_codes))
    report[f"gini_items@{k}"] = gini(exposure[catalogue])
    if seller_codes is not None:
        seller_codes = np.asarray(seller_codes, dtype=np.int64)
        per_seller = seller_exposure(exposure, seller_codes)
        listed = seller_codes[catalogue & (seller_codes >= 0)]
        active = np.bincount(listed, minlength=per_seller.size) > 0
        report[f"gini_sellers@{k}"] = gini(per_seller[active]) if active.any() else float("nan")
    if new_item_flags is not None:
        report[f"new_item_exposure@{k}"] = exposure_share(ranked, new_item_flags)
    if small_seller_flags is not None:
        report[f"small_seller_exposure@{k}"] = exposure_share(ranked, small_seller_flags)
    return report


def _as_distribution(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    if values.size == 0:
        raise ValueError("values is empty: a distribution needs at least one entity")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("values must be finite and non-negative (exposure per entity)")
    return values


def _divide_or_nan(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, dtype=float)
    denominator = np.asarray(denominator, dtype=float)
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nan_mean(values: np.ndarray) -> float:
    """Mean over users where the metric is defined; NaN if it is defined for none."""
    defined = ~np.isnan(values)
    return float(values[defined].mean()) if defined.any() else float("nan")
