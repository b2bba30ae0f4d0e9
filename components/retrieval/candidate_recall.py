"""Candidate recall: how many of the held-out positives the merged candidates and each
source's own top-n contain (`candidate_recall`), and the same over users taken a chunk at a
time (`ChunkedRecall`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.retrieval.candidate_arrays import CandidateArrays, MergedCandidates, as_strings
from components.retrieval.candidate_filters import isin_sorted


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

    merged_users, merged_items, merged_ranks, combined_ranks = _merged_ranks(candidates)
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


def _merged_ranks(
    candidates: pd.DataFrame | MergedCandidates,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The merged candidates' user ids, item ids, rank of each source (by source name) and
    fused rank, from either the arrays or their frame."""
    if isinstance(candidates, MergedCandidates):
        merged_users, merged_items = candidates.user_ids, candidates.item_ids
        merged_ranks = {
            name: candidates.source_ranks[:, code]
            for code, name in enumerate(candidates.source_names)
        }
        return merged_users, merged_items, merged_ranks, candidates.rank
    merged_users = as_strings(candidates["user_id"])
    merged_items = as_strings(candidates["item_id"])
    merged_ranks = {
        c[len("rank_") :]: candidates[c].to_numpy(dtype=np.float64)
        for c in candidates.columns
        if c.startswith("rank_")
    }
    return merged_users, merged_items, merged_ranks, candidates["rank"].to_numpy()


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
