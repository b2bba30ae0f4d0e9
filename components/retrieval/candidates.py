"""Candidate generation: several cheap sources, one protocol, one merged set for the ranker.

Every source answers `candidates(user_ids, n)` with a frame of columns user_id, item_id,
score (float, higher is better), rank (1-based int, by score), at most `n` rows per user
(`components.interfaces.CandidateSource`). This module runs the sources and merges their
answers by reciprocal-rank fusion (`merge_candidates`, `merge_candidate_arrays`,
`generate_candidates`), measures candidate recall (`candidate_recall`), and holds the
array forms both sides use (`CandidateArrays`, `MergedCandidates`). The sources are in
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.config import CandidatesConfig
from components.ids import IdPositions
from components.interfaces import CandidateSource
from components.retrieval.candidate_filters import CandidateFilter, isin_sorted

CANDIDATE_COLUMNS = ("user_id", "item_id", "score", "rank")


# ------------------------------------------------------------------------- running and merging


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
    candidates: pd.DataFrame | MergedCandidates,
    positives: pd.DataFrame,
    n: int,
    *,
    sources: Mapping[str, pd.DataFrame | CandidateArrays] | None = None,
) -> dict[str, float]:
    """Recall@n (BARS: hits / |positives|, averaged over users with positives).

    `combined` uses the merged candidates' rank. Per source: the source's own top-n when it
    is in `sources`, otherwise its `rank_<source>` column of the merged candidates (its hits
    that survived the merge). Users with positives but no candidates count 0. Candidates
    and sources may be frames or the arrays they are made of (no frame built to count).
    """
    truth = positives[["user_id", "item_id"]].astype("string").drop_duplicates()
    if truth.empty:
        raise ValueError("candidate_recall needs at least one positive (user_id, item_id)")
    user_codes, users = pd.factorize(truth["user_id"])
    item_codes, items = pd.factorize(truth["item_id"])
    truth_keys = user_codes.astype(np.int64) * len(items) + item_codes
    per_user = np.bincount(user_codes, minlength=len(users))
    user_index = pd.Index(np.asarray(users, dtype=object))
    item_index = pd.Index(np.asarray(items, dtype=object))

    def recall(user_ids: np.ndarray, item_ids: np.ndarray, ranks: np.ndarray) -> float:
        top = np.asarray(ranks, dtype=np.float64) <= n
        rows = user_index.get_indexer(user_ids[top])
        cols = item_index.get_indexer(item_ids[top])
        known = (rows >= 0) & (cols >= 0)
        keys = np.sort(rows[known].astype(np.int64) * len(items) + cols[known])
        found = isin_sorted(truth_keys, keys)
        hits = np.bincount(user_codes, weights=found, minlength=len(users))
        return float(np.mean(hits / per_user))

    if isinstance(candidates, MergedCandidates):
        merged_users, merged_items = candidates.user_ids, candidates.item_ids
        merged_ranks = {
            name: candidates.source_ranks[:, code]
            for code, name in enumerate(candidates.source_names)
        }
        combined_ranks = candidates.rank
    else:
        merged_users = _as_strings(candidates["user_id"])
        merged_items = _as_strings(candidates["item_id"])
        merged_ranks = {
            c[len("rank_") :]: candidates[c].to_numpy(dtype=np.float64)
            for c in candidates.columns
            if c.startswith("rank_")
        }
        combined_ranks = candidates["rank"].to_numpy()
    result: dict[str, float] = {}
    own = dict(sources or {})
    for name in [*merged_ranks, *(s for s in own if s not in merged_ranks)]:
        if name in own:
            hits = own[name]
            if not isinstance(hits, CandidateArrays):
                hits = CandidateArrays.from_frame(hits)
            result[name] = recall(hits.user_ids, hits.item_ids, hits.ranks)
        else:
            result[name] = recall(merged_users, merged_items, merged_ranks[name])
    result["combined"] = recall(merged_users, merged_items, combined_ranks)
    return result


@dataclass
class ChunkedRecall:
    """`candidate_recall` over users taken a chunk at a time: each chunk's figures weighted
    by its users with positives, so that the result is the mean over all of them."""

    n: int
    _sums: dict[str, float] = field(default_factory=dict)
    _users: int = 0

    def add(
        self,
        candidates: pd.DataFrame | MergedCandidates,
        positives: pd.DataFrame,
        *,
        sources: Mapping[str, pd.DataFrame | CandidateArrays] | None = None,
    ) -> None:
        users = int(positives["user_id"].nunique())
        for name, value in candidate_recall(candidates, positives, self.n, sources=sources).items():
            self._sums[name] = self._sums.get(name, 0.0) + value * users
        self._users += users

    def result(self) -> dict[str, float]:
        """Per source and `combined`, rounded to 4 places (what the report shows)."""
        return {name: round(total / self._users, 4) for name, total in self._sums.items()}


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


@dataclass(frozen=True)
class CandidateTable:
    """Merged candidates computed earlier for a set of users, served again by user: the
    run's test candidates, generated once and then read by the evaluation of the model and
    of its retrieval-only order instead of running every source again."""

    merged: MergedCandidates
    users: IdPositions
    starts: np.ndarray
    stops: np.ndarray

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> CandidateTable:
        """From `MergedCandidates.frame()`: rows grouped by user."""
        names = tuple(c[len("rank_") :] for c in frame.columns if c.startswith("rank_"))
        return cls.from_merged(
            MergedCandidates(
                user_ids=_as_strings(frame["user_id"]),
                item_ids=_as_strings(frame["item_id"]),
                score=frame["score"].to_numpy(np.float64),
                rank=frame["rank"].to_numpy(np.int64),
                n_sources=frame["n_sources"].to_numpy(np.int64),
                source_names=names,
                source_scores=frame[[f"score_{n}" for n in names]].to_numpy(np.float64),
                source_ranks=frame[[f"rank_{n}" for n in names]].to_numpy(np.float64),
            )
        )

    @classmethod
    def read(cls, path: Path) -> CandidateTable:
        """From the parquet file `MergedCandidates.frame()` chunks were written to, one
        column at a time and without a frame: ids point into one string per distinct id
        (30k users x 200 candidates: 0.1 GB of ids, not 0.7 GB of strings per row), so the
        table costs its numbers and little more."""
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        names = tuple(c[len("rank_") :] for c in columns if c.startswith("rank_"))
        rows = parquet.metadata.num_rows

        def numbers(column: str, dtype: type) -> np.ndarray:
            values = parquet.read(columns=[column]).column(0)
            return values.to_numpy().astype(dtype, copy=False) if rows else np.zeros(0, dtype)

        def matrix(prefix: str) -> np.ndarray:
            out = np.empty((rows, len(names)))
            for position, name in enumerate(names):
                out[:, position] = numbers(f"{prefix}{name}", np.float64)
            return out

        def ids(column: str) -> np.ndarray:
            encoded = parquet.read(columns=[column]).column(0).dictionary_encode()
            encoded = encoded.combine_chunks() if encoded.num_chunks else encoded
            if not rows:
                return np.zeros(0, dtype=object)
            strings = np.array([str(v) for v in encoded.dictionary.to_pylist()], dtype=object)
            return strings[encoded.indices.to_numpy(zero_copy_only=False)]

        return cls.from_merged(
            MergedCandidates(
                user_ids=ids("user_id"),
                item_ids=ids("item_id"),
                score=numbers("score", np.float64),
                rank=numbers("rank", np.int64),
                n_sources=numbers("n_sources", np.int64),
                source_names=names,
                source_scores=matrix("score_"),
                source_ranks=matrix("rank_"),
            )
        )

    @classmethod
    def from_merged(cls, merged: MergedCandidates) -> CandidateTable:
        codes, uniques = pd.factorize(merged.user_ids)
        if len(codes) and (np.diff(codes) < 0).any():
            raise ValueError("a candidate table needs its rows grouped by user")
        bounds = np.flatnonzero(np.diff(codes)) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        stops = np.concatenate([bounds, [len(codes)]]).astype(np.int64)
        return cls(merged, IdPositions(uniques), starts, stops)

    def take(self, user_ids: Sequence[str]) -> MergedCandidates | None:
        """The candidates of `user_ids`, in their order (None: a user is not in the table,
        so the caller runs the sources)."""
        positions = self.users.positions(np.asarray(user_ids, dtype=object))
        if (positions < 0).any():
            return None
        lengths = self.stops[positions] - self.starts[positions]
        offsets = np.repeat(self.starts[positions] - np.cumsum(lengths) + lengths, lengths)
        rows = offsets + np.arange(int(lengths.sum()))
        m = self.merged
        return MergedCandidates(
            user_ids=m.user_ids[rows],
            item_ids=m.item_ids[rows],
            score=m.score[rows],
            rank=m.rank[rows],
            n_sources=m.n_sources[rows],
            source_names=m.source_names,
            source_scores=m.source_scores[rows],
            source_ranks=m.source_ranks[rows],
        )


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


def _as_strings(values: pd.Series | np.ndarray) -> np.ndarray:
    """Ids as an object array of str (what every source and the merge key on)."""
    if isinstance(getattr(values, "dtype", None), pd.StringDtype):
        return np.asarray(values, dtype=object)
    return np.array([str(value) for value in np.asarray(values, dtype=object)], dtype=object)
