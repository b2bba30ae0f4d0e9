"""Candidate sources: each answers `candidates(user_ids, n)` (the
`components.interfaces.CandidateSource` protocol) with at most `n` items per user, never
one its `CandidateFilter` forbids (`components.retrieval.candidate_filters`).

- `AnnSource`: two-tower user vectors searched in the Annoy index of item vectors.
- `ScorerSource`: top-n of any `Scorer` over the catalogue (co-visitation, EASE / iALS,
  overall recent popularity).
- `CategoryPopularitySource`: recent popularity inside each user's favourite categories.

Sources also answer `candidate_arrays` (the same rows as `CandidateArrays`, what the merge
in `components.retrieval.candidate_merge` works on without building frames).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import CandidatesConfig
from components.ids import IdPositions
from components.interfaces import Scorer
from components.retrieval.ann_index import AnnIndex
from components.retrieval.candidate_arrays import CandidateArrays
from components.retrieval.candidate_filters import CandidateFilter, isin_sorted
from components.retrieval.popularity import RecentPopularity
from components.retrieval.selection import top_n
from components.retrieval.user_item_scorer import history_before

#: Users scored at once by a source (memory: batch x catalogue float32 scores).
USER_BATCH = 512


@dataclass(frozen=True)
class ScorerSource:
    """Top-n over the allowed catalogue of any Scorer (full scores, then top-n).

    Used for co-visitation, the linear model (EASE or iALS) and overall popularity. Ties
    inside the top n go to the earlier item of `item_ids`; a tie at the n-th score is
    broken by argpartition (deterministic, not by position).
    """

    name: str
    scorer: Scorer
    #: The catalogue to rank (e.g. items["item_id"]); the filter narrows it.
    item_ids: Sequence[str]
    filters: CandidateFilter = field(default_factory=CandidateFilter)
    batch_size: int = USER_BATCH

    @cached_property
    def _allowed_array(self) -> np.ndarray:
        ids = np.asarray(self.item_ids, dtype=object)
        return ids[self.filters.allowed(ids)]

    @cached_property
    def _allowed_positions(self) -> IdPositions:
        return IdPositions(self._allowed_array)

    @cached_property
    def _allowed_list(self) -> list[str]:
        """One list object for every call, so scorers can reuse their column alignment."""
        return list(self._allowed_array)

    def candidates(self, user_ids: Sequence[str], n: int) -> pd.DataFrame:
        return self.candidate_arrays(user_ids, n).frame()

    @cached_property
    def _shared_order(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(allowed positions best first, their scores) when the scorer ranks every user
        alike (it has `item_scores`, like popularity); None otherwise."""
        item_scores = getattr(self.scorer, "item_scores", None)
        if item_scores is None:
            return None
        scores = np.asarray(item_scores(self._allowed_list), dtype=np.float32)
        order = np.argsort(-scores, kind="stable")
        return order, scores[order]

    def candidate_arrays(self, user_ids: Sequence[str], n: int) -> CandidateArrays:
        users = _unique_users(user_ids)
        parts: list[CandidateArrays] = []
        if len(self._allowed_array) == 0:
            return CandidateArrays.empty()
        for batch in _batches(users, self.batch_size):
            rows, cols = self.filters.excluded_pairs(batch, self._allowed_positions)
            if self._shared_order is not None:
                parts.append(self._shared_top(batch, rows, cols, n))
                continue
            sparse = getattr(self.scorer, "sparse_scores", None)
            split = None if sparse is None else sparse(list(batch), self._allowed_list)
            if split is not None:
                matrix, _, scale = split  # the fallback: `_fallback_order`, sorted once
                parts.append(self._sparse_top(batch, rows, cols, n, matrix, scale))
                continue
            scores = np.array(
                self.scorer.score(list(batch), self._allowed_list), dtype=np.float32, copy=True
            )
            scores[rows, cols] = -np.inf
            top, top_scores = top_n(scores, n)
            parts.append(_arrays_from_matrix(batch, top, top_scores, self._allowed_array))
        return CandidateArrays.concat(parts)

    def _shared_top(
        self, batch: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int
    ) -> CandidateArrays:
        """Top-n of a user-independent scorer: the shared order's head past each user's
        exclusions (`_fill_from_order`). Costs batch x (n + exclusions), not batch x
        catalogue (the same lists as the full top-n, ties going to the earlier item)."""
        order, ordered_scores = self._shared_order or (np.zeros(0, np.int64), np.zeros(0))
        top = np.full((len(batch), n), -1, dtype=np.int64)
        top_scores = np.full((len(batch), n), -np.inf, dtype=np.float32)
        filled = np.zeros(len(batch), dtype=np.int64)
        scale = np.ones(len(batch), dtype=np.float32)
        _fill_from_order(top, top_scores, filled, order, ordered_scores, scale, [(rows, cols)])
        return _arrays_from_matrix(batch, top, top_scores, self._allowed_array)

    @cached_property
    def _fallback_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(allowed positions by the `sparse_scores` fallback, best first, their scores):
        user-independent, so sorted once, not once per batch."""
        fallback = self.scorer.sparse_scores([], self._allowed_list)[1]
        order = np.argsort(-fallback, kind="stable")
        return order, fallback[order]

    def _sparse_top(
        self,
        batch: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        n: int,
        matrix: sp.csr_matrix,
        scale: np.ndarray,
    ) -> CandidateArrays:
        """Top-n of a scorer answering `sparse_scores` (co-visitation): each user's own
        scored items first (all above the fallback), best first, then the fallback order's
        head past their exclusions and those items. Costs the batch's co-visits plus
        batch x (2n + exclusions) cells, not batch x catalogue."""
        width = len(self._allowed_array)
        coo = matrix.tocoo()
        banned = np.sort(rows * width + cols)
        allowed = ~isin_sorted(coo.row.astype(np.int64) * width + coo.col, banned)
        entry_row, entry_col = coo.row[allowed].astype(np.int64), coo.col[allowed].astype(np.int64)
        entry_score = coo.data[allowed]
        order = np.lexsort((entry_col, -entry_score, entry_row))
        entry_row, entry_col, entry_score = entry_row[order], entry_col[order], entry_score[order]
        starts = np.searchsorted(entry_row, np.arange(len(batch)))
        rank = np.arange(len(entry_row)) - starts[entry_row]
        chosen = rank < n
        top = np.full((len(batch), n), -1, dtype=np.int64)
        top_scores = np.full((len(batch), n), -np.inf, dtype=np.float32)
        top[entry_row[chosen], rank[chosen]] = entry_col[chosen]
        top_scores[entry_row[chosen], rank[chosen]] = entry_score[chosen]
        filled = np.bincount(entry_row[chosen], minlength=len(batch))
        if width and (filled < n).any():
            # Then the fallback's head past each short row's exclusions and own items.
            order, ordered_scores = self._fallback_order
            struck = [(rows, cols), (entry_row[chosen], entry_col[chosen])]
            _fill_from_order(top, top_scores, filled, order, ordered_scores, scale, struck)
        return _arrays_from_matrix(batch, top, top_scores, self._allowed_array)


@dataclass(frozen=True)
class AnnSource:
    """Nearest items to the user's vector in the Annoy index (cosine scores).

    `user_vectors` embeds users (e.g. TwoTowerScorer.user_vectors); a zero or non-finite
    row means "no vector" and gives no candidates. The index holds the listings available
    at its build; the filter drops those sold or blocked since and the user's exclusions,
    querying more neighbours until n remain or the index is exhausted.
    """

    user_vectors: Callable[[Sequence[str]], np.ndarray]
    index: AnnIndex
    filters: CandidateFilter = field(default_factory=CandidateFilter)
    name: str = "two_tower"
    batch_size: int = USER_BATCH

    @cached_property
    def _allowed_positions(self) -> np.ndarray:
        return self.filters.allowed(self.index.item_ids)

    @cached_property
    def _index_positions(self) -> IdPositions:
        return IdPositions(self.index.item_ids)

    def candidates(self, user_ids: Sequence[str], n: int) -> pd.DataFrame:
        return self.candidate_arrays(user_ids, n).frame()

    def candidate_arrays(self, user_ids: Sequence[str], n: int) -> CandidateArrays:
        users = _unique_users(user_ids)
        parts: list[CandidateArrays] = []
        item_index = self._index_positions
        for batch in _batches(users, self.batch_size):
            vectors = np.asarray(self.user_vectors(list(batch)), dtype=np.float32)
            if vectors.shape[0] != len(batch):
                raise ValueError(
                    f"user_vectors returned {vectors.shape[0]} rows for {len(batch)} users"
                )
            rows, cols = self.filters.excluded_pairs(batch, item_index)
            banned = np.sort(rows * self.index.count + cols)
            excluded = np.bincount(rows, minlength=len(batch))
            top, top_scores = self._search(vectors, banned, n, excluded)
            parts.append(_arrays_from_matrix(batch, top, top_scores, self.index.item_ids))
        return CandidateArrays.concat(parts)

    def _search(
        self, vectors: np.ndarray, banned: np.ndarray, n: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Query each row for n + its own exclusions + 8 neighbours, filter, and re-query
        the rows left short with twice as many (`AnnIndex.search`: exact when a scan is
        cheaper). Each row's depth is its own: one heavy user no longer deepens (and slows)
        the search of the whole batch."""
        count = self.index.count
        top = np.full((len(vectors), n), -1, dtype=np.int64)
        top_scores = np.full((len(vectors), n), -np.inf, dtype=np.float32)
        pending = np.arange(len(vectors))
        if count == 0:
            return top, top_scores
        k = np.minimum(count, n + excluded + 8)
        while len(pending):
            found = self.index.search(vectors[pending], k)
            keys = pending[:, None] * count + np.maximum(found.positions, 0)
            ok = found.positions >= 0
            ok &= self._allowed_positions[np.maximum(found.positions, 0)]
            ok &= ~isin_sorted(keys, banned)
            taken = ok & (np.cumsum(ok, axis=1) <= n)
            for slot, row in enumerate(pending):
                chosen = np.flatnonzero(taken[slot])
                top[row, : len(chosen)] = found.positions[slot, chosen]
                top_scores[row, : len(chosen)] = found.scores[slot, chosen]
            returned = (found.positions >= 0).sum(axis=1)
            short = (taken.sum(axis=1) < n) & (returned == k) & (k < count)
            pending = pending[short]
            k = np.minimum(count, 2 * k[short])
        return top, top_scores


@dataclass(frozen=True)
class CategoryPopularitySource:
    """Recently popular items inside each user's top categories.

    A user's affinity to a category is the event-weighted (popularity event_weights),
    recency-decayed (`config.affinity_half_life`) count of their history in it; their
    `config.top_categories` categories share the n slots in proportion to it (largest
    remainder; slots a category cannot fill go to the others). Score = the category's
    affinity share x the item's popularity relative to the top item of its category, so the
    ranks interleave the categories. Inside a category, equally popular items go newest
    first. Users without history get no rows (overall popularity covers them).
    """

    #: Allowed items per category, best first, and their within-category scores in [0, 1].
    category_items: Mapping[str, np.ndarray]
    category_scores: Mapping[str, np.ndarray]
    #: Per user: their top categories and affinity shares (summing to 1), best first.
    affinity: Mapping[str, tuple[tuple[str, ...], np.ndarray]]
    filters: CandidateFilter = field(default_factory=CandidateFilter)
    name: str = "category_popularity"

    @classmethod
    def fit(
        cls,
        history: pd.DataFrame,
        items: pd.DataFrame,
        popularity: RecentPopularity,
        config: CandidatesConfig,
        filters: CandidateFilter,
        as_of: pd.Timestamp | None = None,
    ) -> CategoryPopularitySource:
        """Affinities from `history` strictly before `as_of`; item popularity from the
        fitted `popularity` (fit it at the same `as_of`)."""
        column = config.category_column
        catalogue = items[items[column].notna()]
        catalogue = catalogue[filters.allowed(catalogue["item_id"].astype(str).to_numpy())]
        ids = catalogue["item_id"].astype(str).to_numpy(dtype=object)
        table = pd.DataFrame(
            {
                "item_id": ids,
                "category": catalogue[column].astype(str).to_numpy(dtype=object),
                "popularity": popularity.item_scores(list(ids)).astype(np.float64),
                "created": _epoch_seconds(catalogue["created_at"]),
            }
        )
        table = table.sort_values(
            ["category", "popularity", "created", "item_id"],
            ascending=[True, False, False, True],
            kind="stable",
        )
        category_items: dict[str, np.ndarray] = {}
        category_scores: dict[str, np.ndarray] = {}
        for category, group in table.groupby("category", sort=True):
            values = group["popularity"].to_numpy()
            top = values[0] if len(values) and values[0] > 0 else 1.0
            category_items[str(category)] = group["item_id"].to_numpy(dtype=object)
            category_scores[str(category)] = values / top
        affinity = _category_affinity(
            history,
            items,
            column,
            config.top_categories,
            popularity.config.event_weights,
            config.affinity_half_life,
            as_of,
        )
        return cls(
            category_items=category_items,
            category_scores=category_scores,
            affinity=affinity,
            filters=filters,
        )

    def candidates(self, user_ids: Sequence[str], n: int) -> pd.DataFrame:
        return self.candidate_arrays(user_ids, n).frame()

    def candidate_arrays(self, user_ids: Sequence[str], n: int) -> CandidateArrays:
        users: list[str] = []
        item_ids: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for user in _unique_users(user_ids):
            if user not in self.affinity:
                continue
            categories, shares = self.affinity[user]
            excluded = self.filters.exclude.get(user, frozenset())
            lists = []
            for category in categories:
                ids = self.category_items.get(category, np.zeros(0, dtype=object))
                values = self.category_scores.get(category, np.zeros(0))
                # Only the first n + |excluded| items can be needed.
                head = min(len(ids), n + len(excluded))
                ids, values = ids[:head], values[:head]
                if excluded:
                    keep = np.fromiter((i not in excluded for i in ids), bool, len(ids))
                    ids, values = ids[keep], values[keep]
                lists.append((ids, values))
            quotas = _apportion(n, shares, np.array([len(ids) for ids, _ in lists]))
            chosen = [
                (ids[:quota], share * values[:quota])
                for (ids, values), share, quota in zip(lists, shares, quotas, strict=True)
            ]
            user_items = np.concatenate([ids for ids, _ in chosen])
            user_scores = np.concatenate([values for _, values in chosen])
            order = np.argsort(-user_scores, kind="stable")
            users.append(user)
            item_ids.append(user_items[order])
            scores.append(user_scores[order])
        if not users:
            return CandidateArrays.empty()
        lengths = np.array([len(ids) for ids in item_ids])
        return CandidateArrays(
            np.repeat(np.array(users, dtype=object), lengths),
            np.concatenate(item_ids).astype(object),
            np.concatenate(scores).astype(np.float64),
            np.concatenate([np.arange(1, length + 1) for length in lengths]).astype(np.int64),
        )


def _category_affinity(
    history: pd.DataFrame,
    items: pd.DataFrame,
    column: str,
    top_categories: int,
    event_weights: Mapping[str, float],
    half_life: str | None,
    as_of: pd.Timestamp | None,
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """Each user's top categories, best first, with affinity shares summing to 1."""
    frame, as_of = history_before(history, as_of)
    category = frame["item_id"].map(items.set_index("item_id")[column])
    weights = frame["event"].map(dict(event_weights)).astype(float).fillna(1.0).to_numpy()
    if half_life is not None and as_of is not None:
        age = (as_of - frame["ts"]).dt.total_seconds().to_numpy(dtype=float)
        weights = weights * np.power(0.5, age / pd.Timedelta(half_life).total_seconds())
    table = pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str).to_numpy(dtype=object),
            "category": category.to_numpy(dtype=object),
            "w": weights,
        }
    ).dropna(subset=["category"])
    totals = table.groupby(["user_id", "category"], sort=True)["w"].sum().reset_index()
    totals = totals[totals["w"] > 0].sort_values(
        ["user_id", "w", "category"], ascending=[True, False, True], kind="stable"
    )
    totals = totals[totals.groupby("user_id").cumcount() < top_categories]
    affinity: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    for user, group in totals.groupby("user_id", sort=False):
        values = group["w"].to_numpy(dtype=float)
        affinity[str(user)] = (tuple(group["category"].astype(str)), values / values.sum())
    return affinity


def _apportion(n: int, shares: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Split n slots by shares (largest remainder), capped at each list's capacity; slots
    a list cannot fill go to the others by the same rule."""
    quotas = np.zeros(len(shares), dtype=np.int64)
    remaining = min(n, int(capacity.sum()))
    while remaining > 0:
        open_ = quotas < capacity
        weights = np.where(open_, shares, 0.0)
        if weights.sum() <= 0:
            weights = open_.astype(float)
        ideal = remaining * weights / weights.sum()
        extra = np.floor(ideal).astype(np.int64)
        leftover = remaining - int(extra.sum())
        order = np.lexsort((np.arange(len(shares)), -(ideal - extra)))
        extra[order[:leftover]] += 1
        extra = np.minimum(extra, capacity - quotas)
        quotas += extra
        remaining -= int(extra.sum())
    return quotas


# ------------------------------------------------------------------------- helpers


def _arrays_from_matrix(
    users: np.ndarray, top: np.ndarray, top_scores: np.ndarray, item_ids: np.ndarray
) -> CandidateArrays:
    """Flatten (users x n) positions (-1 padded at the end) into candidate arrays."""
    valid = top >= 0
    rows, cols = np.nonzero(valid)
    return CandidateArrays(
        users[rows],
        np.asarray(item_ids, dtype=object)[top[valid]],
        top_scores[valid].astype(np.float64),
        cols.astype(np.int64) + 1,
    )


def _fill_from_order(
    top: np.ndarray,
    top_scores: np.ndarray,
    filled: np.ndarray,
    order: np.ndarray,
    ordered_scores: np.ndarray,
    scale: np.ndarray,
    struck: Sequence[tuple[np.ndarray, np.ndarray]],
) -> None:
    """Complete each row of `top` (its first `filled[row]` slots taken) from one shared
    order of catalogue positions, best first, skipping the (row, position) pairs in
    `struck`; scores are `ordered_scores x scale[row]`. Only the order's head is read:
    deep enough for the most pairs any short row must skip."""
    n = top.shape[1]
    short = np.flatnonzero(filled < n)
    if len(short) == 0 or len(order) == 0:
        return
    skipped = sum(np.bincount(rows, minlength=len(top)) for rows, _ in struck) + filled
    depth = min(len(order), n + int(skipped[short].max()))
    rank_of = np.full(len(order), -1, dtype=np.int64)  # order: every position once
    rank_of[order[:depth]] = np.arange(depth)
    slot_of_row = np.full(len(top), -1, dtype=np.int64)
    slot_of_row[short] = np.arange(len(short))
    keep = np.ones((len(short), depth), dtype=bool)
    for struck_rows, struck_cols in struck:
        hit = (rank_of[struck_cols] >= 0) & (slot_of_row[struck_rows] >= 0)
        keep[slot_of_row[struck_rows[hit]], rank_of[struck_cols[hit]]] = False
    kept_rank = np.cumsum(keep, axis=1)
    take = keep & (kept_rank <= (n - filled[short])[:, None])
    slot, column = np.nonzero(take)
    row = short[slot]
    position = filled[row] + kept_rank[slot, column] - 1
    top[row, position] = order[column]
    top_scores[row, position] = ordered_scores[column] * scale[row]


def _unique_users(user_ids: Sequence[str]) -> np.ndarray:
    """Users as strings, first occurrence kept, order preserved."""
    return pd.unique(np.asarray([str(u) for u in user_ids], dtype=object))


def _batches(users: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(users), size):
        yield users[start : start + size]


def _epoch_seconds(values: pd.Series) -> np.ndarray:
    """Seconds since the epoch (NaN where unknown), for newest-first tie-breaks."""
    if not isinstance(values.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(
        values.dtype
    ):
        return np.full(len(values), np.nan)
    stamps = pd.to_datetime(values, utc=True)
    seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.to_numpy(dtype=float, na_value=np.nan)
