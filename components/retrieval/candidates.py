"""Candidate generation: several cheap sources, one protocol, one merged set for the ranker.

Every source answers `candidates(user_ids, n)` with a frame of columns user_id, item_id,
score (float, higher is better), rank (1-based int, by score), at most `n` rows per user. A
source never returns an item its `CandidateFilter` forbids: one the user already bought
(every item of their history for rating / fixed-split data), one not available at the
cut-off (sold, not yet listed), or a blocked one. `merge_candidates` applies the filter
again, so a source built on stale data (an Annoy index from the last refresh) cannot leak a
listing sold since.

Sources:
- `AnnSource`: two-tower user vectors searched in the Annoy index of item vectors.
- `ScorerSource`: top-n of any `Scorer` over the catalogue (co-visitation, EASE / iALS,
  overall recent popularity).
- `CategoryPopularitySource`: recent popularity inside each user's favourite categories.

Example (not run)::

    available = split.available_items(split.test_cutoff)
    filters = CandidateFilter.from_tables(history, items, available, config.candidates)
    sources = [
        AnnSource(two_tower.user_vectors, AnnIndex.load(index_folder), filters),
        ScorerSource("covisitation", covisitation, items["item_id"], filters),
        CategoryPopularitySource.fit(history, items, popularity, config.candidates, filters),
    ]
    frames = run_sources(sources, user_ids, config.candidates.per_source)
    merged = merge_candidates(frames, config.candidates.n, filters=filters)
    candidate_recall(merged, split.test, n=config.candidates.n, sources=frames)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from components.config import CandidatesConfig
from components.ids import IdPositions
from components.interfaces import CandidateSource, Scorer
from components.retrieval.ann_index import AnnIndex
from components.retrieval.collaborative import history_before
from components.retrieval.popularity import RecentPopularity

CANDIDATE_COLUMNS = ("user_id", "item_id", "score", "rank")
#: Users scored at once by a source (memory: batch x catalogue float32 scores).
USER_BATCH = 512


# ------------------------------------------------------------------------- filters


def build_exclusions(
    history: pd.DataFrame, events: Sequence[str] | None = ("purchase",)
) -> dict[str, frozenset[str]]:
    """Items each user must not be shown again: those they had one of `events` with.

    `events=None` excludes every item of the user's history (rating and fixed-split data,
    where the published protocol masks all training items).
    """
    frame = history if events is None else history[history["event"].isin(list(events))]
    pairs = frame[["user_id", "item_id"]].drop_duplicates()
    grouped = pairs.groupby("user_id", sort=False)["item_id"]
    return {str(user): frozenset(items.astype(str)) for user, items in grouped}


@dataclass(frozen=True)
class CandidateFilter:
    """What no candidate source may return, for whom.

    `exclude` maps a user to the items they must not get (see `build_exclusions`);
    `available` holds the items recommendable at the cut-off (None: all); `blocked` items
    are never returned to anyone.
    """

    exclude: Mapping[str, AbstractSet[str]] = field(default_factory=dict)
    available: AbstractSet[str] | None = None
    blocked: AbstractSet[str] = frozenset()

    @classmethod
    def from_tables(
        cls,
        history: pd.DataFrame,
        items: pd.DataFrame,
        available: pd.Series | np.ndarray | None,
        config: CandidatesConfig,
        exclude_events: Sequence[str] | None = ("purchase",),
    ) -> CandidateFilter:
        """The filter at a cut-off: `available` is a boolean per row of `items`
        (DataSplit.available_items), exclusions come from `history`."""
        open_items = None
        if available is not None:
            mask = np.asarray(available, dtype=bool)
            open_items = frozenset(items["item_id"].astype(str).to_numpy()[mask])
        return cls(
            exclude=build_exclusions(history, exclude_events),
            available=open_items,
            blocked=frozenset(config.blocked_item_ids),
        )

    def allowed(self, item_ids: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
        """Boolean per item: available and not blocked (user exclusions aside)."""
        # Set lookups: pandas' isin on (pyarrow-backed) strings costs ~50 ms per request.
        ids = np.asarray(item_ids, dtype=object)
        keep = np.ones(len(ids), dtype=bool)
        if self.available is not None:
            available = self.available
            keep &= np.fromiter((item in available for item in ids), bool, len(ids))
        if self.blocked:
            blocked = self.blocked
            keep &= ~np.fromiter((item in blocked for item in ids), bool, len(ids))
        return keep

    def excluded_pairs(
        self, user_ids: Sequence[str], item_index: IdPositions
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row, column) positions of excluded items for `user_ids` x `item_index`."""
        lists = [self.exclude.get(str(user), ()) for user in user_ids]
        lengths = np.fromiter((len(items) for items in lists), np.int64, len(lists))
        if not lengths.sum():
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        rows = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)
        cols = item_index.positions([item for items in lists for item in items])
        known = cols >= 0
        return rows[known], cols[known].astype(np.int64)

    def keep(
        self, user_ids: Sequence[str] | pd.Series, item_ids: Sequence[str] | pd.Series
    ) -> np.ndarray:
        """Boolean per (user, item) row: the pair may be recommended."""
        keep = self.allowed(item_ids)
        user_codes, users = pd.factorize(np.asarray(user_ids, dtype=object))
        item_codes, items = pd.factorize(np.asarray(item_ids, dtype=object))
        rows, cols = self.excluded_pairs(list(users), IdPositions(items))
        if len(rows):
            width = len(items)
            banned = np.sort(rows * width + cols)
            keep &= ~_isin_sorted(user_codes.astype(np.int64) * width + item_codes, banned)
        return keep


# ------------------------------------------------------------------------- sources


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
    filters: CandidateFilter = CandidateFilter()
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

    def candidate_arrays(self, user_ids: Sequence[str], n: int) -> CandidateArrays:
        users = _unique_users(user_ids)
        parts: list[CandidateArrays] = []
        if len(self._allowed_array) == 0:
            return CandidateArrays.empty()
        for batch in _batches(users, self.batch_size):
            scores = np.array(
                self.scorer.score(list(batch), self._allowed_list), dtype=np.float32, copy=True
            )
            rows, cols = self.filters.excluded_pairs(batch, self._allowed_positions)
            scores[rows, cols] = -np.inf
            top, top_scores = top_n(scores, n)
            parts.append(_arrays_from_matrix(batch, top, top_scores, self._allowed_array))
        return CandidateArrays.concat(parts)


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
    filters: CandidateFilter = CandidateFilter()
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
            most_excluded = int(np.bincount(rows).max()) if len(rows) else 0
            top, top_scores = self._search(vectors, banned, n, most_excluded)
            parts.append(_arrays_from_matrix(batch, top, top_scores, self.index.item_ids))
        return CandidateArrays.concat(parts)

    def _search(
        self, vectors: np.ndarray, banned: np.ndarray, n: int, most_excluded: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Query k > n neighbours, filter, and re-query rows left short with 2k."""
        count = self.index.count
        top = np.full((len(vectors), n), -1, dtype=np.int64)
        top_scores = np.full((len(vectors), n), -np.inf, dtype=np.float32)
        pending = np.arange(len(vectors))
        k = min(count, n + most_excluded + 8)
        while len(pending) and k > 0:
            found = self.index.query(vectors[pending], k)
            keys = pending[:, None] * count + np.maximum(found.positions, 0)
            ok = found.positions >= 0
            ok &= self._allowed_positions[np.maximum(found.positions, 0)]
            ok &= ~_isin_sorted(keys, banned)
            taken = ok & (np.cumsum(ok, axis=1) <= n)
            for slot, row in enumerate(pending):
                chosen = np.flatnonzero(taken[slot])
                top[row, : len(chosen)] = found.positions[slot, chosen]
                top_scores[row, : len(chosen)] = found.scores[slot, chosen]
            returned = (found.positions >= 0).sum(axis=1)
            short = (taken.sum(axis=1) < n) & (returned == k) & (k < count)
            pending = pending[short]
            k = min(count, 2 * k)
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
    filters: CandidateFilter = CandidateFilter()
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


# ------------------------------------------------------------------------- merging


def run_sources(
    sources: Sequence[CandidateSource], user_ids: Sequence[str], n: int
) -> dict[str, pd.DataFrame]:
    """Each source's top-n frame, by source name (names must be unique)."""
    return {name: hits.frame() for name, hits in run_source_arrays(sources, user_ids, n).items()}


def run_source_arrays(
    sources: Sequence[CandidateSource], user_ids: Sequence[str], n: int
) -> dict[str, CandidateArrays]:
    """Each source's top-n as arrays, by source name (names must be unique)."""
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate sources need unique names, got {names}")
    return {source.name: source_arrays(source, user_ids, n) for source in sources}


def source_arrays(source: CandidateSource, user_ids: Sequence[str], n: int) -> CandidateArrays:
    """A source's candidates as arrays (sources that only answer frames are converted)."""
    as_arrays = getattr(source, "candidate_arrays", None)
    if as_arrays is not None:
        return as_arrays(user_ids, n)
    return CandidateArrays.from_frame(source.candidates(user_ids, n))


def merge_candidates(
    frames: Mapping[str, pd.DataFrame],
    n: int,
    *,
    filters: CandidateFilter | None = None,
    rrf_k: int = 60,
    weights: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per (user, item) across sources, best n per user by reciprocal-rank fusion.

    Columns: user_id, item_id, score (fusion), rank (1..n), n_sources, then score_<source>
    and rank_<source> per source (NaN where the source did not return the pair). The
    fusion itself is `merge_candidate_arrays`.
    """
    hits = {name: CandidateArrays.from_frame(frame) for name, frame in frames.items()}
    return merge_candidate_arrays(hits, n, filters=filters, rrf_k=rrf_k, weights=weights).frame()


def merge_candidate_arrays(
    hits: Mapping[str, CandidateArrays],
    n: int,
    *,
    filters: CandidateFilter | None = None,
    rrf_k: int = 60,
    weights: Mapping[str, float] | None = None,
) -> MergedCandidates:
    """One row per (user, item) across sources, best n per user by reciprocal-rank fusion.

    Fusion score = sum over the sources that returned the pair of w_s / (rrf_k + rank_s)
    (Cormack et al. 2009; w_s from `weights`, default 1): it needs no calibration between
    sources whose scores live on different scales, and rewards items several sources agree
    on. `filters`, when given, is applied again first. Ties go to the better best rank,
    then to the earlier source in `hits`. Plain arrays throughout: the served model runs
    this per request.
    """
    names = list(hits)
    negative = {name: w for name, w in (weights or {}).items() if w < 0}
    if negative:
        raise ValueError(f"fusion weights must be >= 0, got {negative}; use 0 to mute a source")
    parts = [hits[name] for name in names]
    if not parts or not sum(len(part) for part in parts):
        return MergedCandidates.empty(names)
    user_ids = np.concatenate([part.user_ids for part in parts])
    item_ids = np.concatenate([part.item_ids for part in parts])
    source = np.repeat(np.arange(len(names)), [len(part) for part in parts])
    score = np.concatenate([part.scores for part in parts])
    rank = np.concatenate([part.ranks for part in parts])
    if filters is not None:
        keep = filters.keep(user_ids, item_ids)
        user_ids, item_ids, source = user_ids[keep], item_ids[keep], source[keep]
        score, rank = score[keep], rank[keep]
        if not len(user_ids):
            return MergedCandidates.empty(names)
    # User codes in order of first appearance (the sources' user order); item codes sorted.
    user_codes, users = pd.factorize(user_ids)
    item_codes, items = pd.factorize(item_ids, sort=True)
    pair_codes, pair_keys = pd.factorize(user_codes.astype(np.int64) * len(items) + item_codes)
    # Best rank assigned last, so a source repeating a pair keeps its best rank.
    worst_first = np.argsort(-rank, kind="stable")
    pair_codes = pair_codes[worst_first]
    source_codes = source[worst_first]
    scores = np.full((len(pair_keys), len(names)), np.nan)
    ranks = np.full((len(pair_keys), len(names)), np.nan)
    scores[pair_codes, source_codes] = score[worst_first]
    ranks[pair_codes, source_codes] = rank[worst_first]
    present = ~np.isnan(ranks)
    source_weights = np.array([(weights or {}).get(name, 1.0) for name in names])
    fusion = np.where(present, source_weights / (rrf_k + np.where(present, ranks, 0.0)), 0.0)
    fusion = fusion.sum(axis=1)
    best_rank = np.where(present, ranks, np.inf).min(axis=1)
    first_source = present.argmax(axis=1)
    pair_user = pair_keys // len(items)
    pair_item = pair_keys % len(items)
    # Small integer keys sort by radix; a source ranks each of a user's items once, so
    # (best rank, first source) already separates a user's pairs.
    order = np.lexsort(
        (
            first_source.astype(np.min_scalar_type(len(names))),
            best_rank.astype(np.min_scalar_type(int(best_rank.max()))),
            -fusion,
            pair_user.astype(np.min_scalar_type(len(users))),
        )
    )
    merged_rank = ranks_within_groups(pair_user[order])
    keep = merged_rank <= n
    order, merged_rank = order[keep], merged_rank[keep]
    return MergedCandidates(
        user_ids=np.asarray(users, dtype=object)[pair_user[order]],
        item_ids=np.asarray(items, dtype=object)[pair_item[order]],
        score=fusion[order],
        rank=merged_rank.astype(np.int64),
        n_sources=present[order].sum(axis=1).astype(np.int64),
        source_names=tuple(names),
        source_scores=scores[order],
        source_ranks=ranks[order],
    )


def ranks_within_groups(sorted_groups: np.ndarray) -> np.ndarray:
    """1-based position of each row inside its run of equal (sorted) group codes."""
    if not len(sorted_groups):
        return np.zeros(0, dtype=np.int64)
    group_start = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    starts = np.repeat(group_start, np.diff(np.r_[group_start, len(sorted_groups)]))
    return np.arange(len(sorted_groups)) - starts + 1


def generate_candidates(
    sources: Sequence[CandidateSource],
    user_ids: Sequence[str],
    config: CandidatesConfig,
    *,
    filters: CandidateFilter | None = None,
) -> pd.DataFrame:
    """Run every source (config.per_source each) and merge to config.n per user.

    The merge re-applies `filters` (when given) and always drops config.blocked_item_ids.
    """
    frames = run_sources(sources, user_ids, config.per_source)
    blocked = frozenset(config.blocked_item_ids)
    if filters is None:
        filters = CandidateFilter(blocked=blocked)
    elif not blocked <= set(filters.blocked):
        filters = CandidateFilter(
            exclude=filters.exclude,
            available=filters.available,
            blocked=frozenset(filters.blocked) | blocked,
        )
    return merge_candidates(
        frames, config.n, filters=filters, rrf_k=config.rrf_k, weights=config.source_weights
    )


def candidate_recall(
    candidates: pd.DataFrame,
    positives: pd.DataFrame,
    n: int,
    *,
    sources: Mapping[str, pd.DataFrame] | None = None,
) -> dict[str, float]:
    """Recall@n (BARS: hits / |positives|, averaged over users with positives).

    `combined` uses the `rank` column of `candidates`. Per source: the source's own top-n
    when its frame is in `sources`, otherwise its `rank_<source>` column of a merged frame
    (its hits that survived the merge). Users with positives but no candidates count 0.
    """
    truth = positives[["user_id", "item_id"]].astype("string").drop_duplicates()
    if truth.empty:
        raise ValueError("candidate_recall needs at least one positive (user_id, item_id)")
    user_codes, users = pd.factorize(truth["user_id"])
    item_codes, items = pd.factorize(truth["item_id"])
    truth_keys = user_codes.astype(np.int64) * len(items) + item_codes
    per_user = np.bincount(user_codes, minlength=len(users))
    user_index, item_index = pd.Index(users), pd.Index(items)

    def recall(frame: pd.DataFrame, rank_column: str) -> float:
        top = frame[frame[rank_column] <= n]
        rows = user_index.get_indexer(top["user_id"].astype("string"))
        cols = item_index.get_indexer(top["item_id"].astype("string"))
        known = (rows >= 0) & (cols >= 0)
        keys = np.sort(rows[known].astype(np.int64) * len(items) + cols[known])
        found = _isin_sorted(truth_keys, keys)
        hits = np.bincount(user_codes, weights=found, minlength=len(users))
        return float(np.mean(hits / per_user))

    result: dict[str, float] = {}
    own = dict(sources or {})
    merged_sources = [c[len("rank_") :] for c in candidates.columns if c.startswith("rank_")]
    for name in [*merged_sources, *(s for s in own if s not in merged_sources)]:
        if name in own:
            result[name] = recall(own[name], "rank")
        else:
            result[name] = recall(candidates, f"rank_{name}")
    result["combined"] = recall(candidates, "rank")
    return result


# ------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class CandidateArrays:
    """One source's candidates as parallel arrays (what `candidates` puts in a frame):
    user and item ids (object arrays of str), scores (float64) and 1-based ranks (int64)."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def empty(cls) -> CandidateArrays:
        return cls(
            np.zeros(0, dtype=object),
            np.zeros(0, dtype=object),
            np.zeros(0, dtype=np.float64),
            np.zeros(0, dtype=np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[CandidateArrays]) -> CandidateArrays:
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([part.user_ids for part in parts]),
            np.concatenate([part.item_ids for part in parts]),
            np.concatenate([part.scores for part in parts]),
            np.concatenate([part.ranks for part in parts]),
        )

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CandidateArrays:
        return cls(
            _as_strings(frame["user_id"]),
            _as_strings(frame["item_id"]),
            frame["score"].to_numpy(dtype=np.float64),
            frame["rank"].to_numpy(dtype=np.int64),
        )

    def frame(self) -> pd.DataFrame:
        return _candidate_frame(self.user_ids, self.item_ids, self.scores, self.ranks)


@dataclass(frozen=True)
class MergedCandidates:
    """The fused candidates as arrays: rows grouped by user, best fusion score first."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    n_sources: np.ndarray
    source_names: tuple[str, ...]
    #: (rows, sources) score and rank of each source, NaN where it did not return the pair.
    source_scores: np.ndarray
    source_ranks: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def empty(cls, names: Sequence[str]) -> MergedCandidates:
        return cls(
            user_ids=np.zeros(0, dtype=object),
            item_ids=np.zeros(0, dtype=object),
            score=np.zeros(0),
            rank=np.zeros(0, dtype=np.int64),
            n_sources=np.zeros(0, dtype=np.int64),
            source_names=tuple(names),
            source_scores=np.zeros((0, len(names))),
            source_ranks=np.zeros((0, len(names))),
        )

    def retrieval_columns(self) -> dict[str, np.ndarray]:
        """score, rank, n_sources, then score_<source> and rank_<source> per source."""
        columns: dict[str, np.ndarray] = {
            "score": self.score,
            "rank": self.rank,
            "n_sources": self.n_sources,
        }
        for code, name in enumerate(self.source_names):
            columns[f"score_{name}"] = self.source_scores[:, code]
            columns[f"rank_{name}"] = self.source_ranks[:, code]
        return columns

    def best_sources(self) -> np.ndarray:
        """Per row, the source that ranked the item best (first source on ties)."""
        if not self.source_names:
            return np.full(len(self), "retrieval", dtype=object)
        ranks = np.where(np.isnan(self.source_ranks), np.inf, self.source_ranks)
        return np.asarray(self.source_names, dtype=object)[ranks.argmin(axis=1)]

    def frame(self) -> pd.DataFrame:
        frame = _candidate_frame(self.user_ids, self.item_ids, self.score, self.rank)
        columns = self.retrieval_columns()
        frame["n_sources"] = columns.pop("n_sources")
        for name in ("score", "rank"):
            columns.pop(name)
        for name, values in columns.items():
            frame[name] = values
        return frame


def empty_candidates() -> pd.DataFrame:
    return CandidateArrays.empty().frame()


def _candidate_frame(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, ranks: np.ndarray
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": pd.array(users, dtype="string"),
            "item_id": pd.array(items, dtype="string"),
            "score": np.asarray(scores, dtype=np.float64),
            "rank": np.asarray(ranks, dtype=np.int64),
        }
    )


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


def _as_strings(values: pd.Series | np.ndarray) -> np.ndarray:
    """Ids as an object array of str (what every source and the merge key on)."""
    if isinstance(getattr(values, "dtype", None), pd.StringDtype):
        return np.asarray(values, dtype=object)
    return np.array([str(value) for value in np.asarray(values, dtype=object)], dtype=object)


def _unique_users(user_ids: Sequence[str]) -> np.ndarray:
    """Users as strings, first occurrence kept, order preserved."""
    return pd.unique(np.asarray([str(u) for u in user_ids], dtype=object))


def _batches(users: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(users), size):
        yield users[start : start + size]


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Best n columns per row by score (argpartition, then sorted; -1 / -inf pad the
    columns whose score is -inf or NaN)."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    n_rows, width = scores.shape
    n = min(n, width)
    if n == 0:
        return np.zeros((n_rows, 0), dtype=np.int64), np.zeros((n_rows, 0), scores.dtype)
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    top_scores = np.take_along_axis(part_scores, order, axis=1)
    top[~np.isfinite(top_scores)] = -1
    return top, top_scores


def _isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(values.shape, dtype=bool)
    position = np.searchsorted(sorted_keys, values)
    position = np.minimum(position, len(sorted_keys) - 1)
    return sorted_keys[position] == values


def _epoch_seconds(values: pd.Series) -> np.ndarray:
    """Seconds since the epoch (NaN where unknown), for newest-first tie-breaks."""
    if not isinstance(values.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(
        values.dtype
    ):
        return np.full(len(values), np.nan)
    stamps = pd.to_datetime(values, utc=True)
    seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
    return seconds.to_numpy(dtype=float, na_value=np.nan)
