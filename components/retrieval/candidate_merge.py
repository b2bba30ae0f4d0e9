"""Candidate generation: several cheap sources, one protocol, one merged set for the ranker.

Every source answers `candidates(user_ids, n)` with a frame of columns user_id, item_id,
score (float, higher is better), rank (1-based int, by score), at most `n` rows per user
(`components.interfaces.CandidateSource`). This module runs the sources and merges their
answers by reciprocal-rank fusion (`merge_candidates`, `merge_candidate_arrays`,
`generate_candidates`). Candidate recall is measured in
`components.retrieval.candidate_recall`; the array forms both sides use
(`CandidateArrays`, `MergedCandidates`) are in `components.retrieval.candidate_arrays`, and
merged candidates kept for later (`CandidateTable`) in
`components.retrieval.candidate_table`. The sources are in
`components.retrieval.candidate_sources`; what they may not return
(`CandidateFilter`, applied again by the merge) is in
`components.retrieval.candidate_filters`.

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

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from components.config import CandidatesConfig
from components.interfaces import CandidateSource
from components.retrieval.candidate_arrays import CandidateArrays, MergedCandidates
from components.retrieval.candidate_filters import CandidateFilter


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
    pooled = _pooled_hits([hits[name] for name in names], filters)
    if pooled is None:
        return MergedCandidates.empty(names)
    user_ids, item_ids, source, score, rank = pooled
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
    order = _fusion_order(pair_user, fusion, best_rank, first_source, len(users), len(names))
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


def _pooled_hits(
    parts: Sequence[CandidateArrays], filters: CandidateFilter | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Every source's hits in one set of arrays (user ids, item ids, source code, score,
    rank), `filters` applied when given; None when no hit is left."""
    if not parts or not sum(len(part) for part in parts):
        return None
    user_ids = np.concatenate([part.user_ids for part in parts])
    item_ids = np.concatenate([part.item_ids for part in parts])
    source = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
    score = np.concatenate([part.scores for part in parts])
    rank = np.concatenate([part.ranks for part in parts])
    if filters is not None:
        keep = filters.keep(user_ids, item_ids)
        user_ids, item_ids, source = user_ids[keep], item_ids[keep], source[keep]
        score, rank = score[keep], rank[keep]
        if not len(user_ids):
            return None
    return user_ids, item_ids, source, score, rank


def _fusion_order(
    pair_user: np.ndarray,
    fusion: np.ndarray,
    best_rank: np.ndarray,
    first_source: np.ndarray,
    n_users: int,
    n_sources: int,
) -> np.ndarray:
    """Pairs grouped by user, best fusion score first, ties to the better best rank, then
    to the earlier source."""
    # Small integer keys sort by radix; a source ranks each of a user's items once, so
    # (best rank, first source) already separates a user's pairs.
    return np.lexsort(
        (
            first_source.astype(np.min_scalar_type(n_sources)),
            best_rank.astype(np.min_scalar_type(int(best_rank.max()))),
            -fusion,
            pair_user.astype(np.min_scalar_type(n_users)),
        )
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
