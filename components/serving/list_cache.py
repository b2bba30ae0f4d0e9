"""A recommender's answers computed once per known user, then served past exclusions.

A bundle is immutable, so a known user's ranked list only changes by what a request excludes
(listings sold since, items excluded by the caller): the first `depth` slots of the answer
without exclusions, filtered, are the answer with them as long as at least `k` survive
(`ranked_lists.first_unblocked`, the rule the bundle's stored lists follow too). Simulations
and replays ask the same users again and again while listings sell; this answers them in
microseconds instead of a ranker pass each. Rows that are not a known user alone (sessions,
anonymous rows) and users whose cached slots run short are passed to the recommender itself,
so every answer is the recommender's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.serving.ranked_lists import first_unblocked
from components.serving.recommender import (
    ITEM_DISPLAY_COLUMNS,
    OUTPUT_COLUMNS,
    BundleRecommender,
    request_runs,
)
from components.serving.request_parsing import MAX_ROWS, validate_k


@dataclass(frozen=True)
class _CachedList:
    """A user's answer without exclusions: catalogue rows, scores, sources, best first."""

    rows: np.ndarray
    scores: np.ndarray
    sources: np.ndarray


@dataclass
class CachedLists:
    """`BundleRecommender.recommend` with each known user's top `depth` answer cached."""

    recommender: BundleRecommender
    depth: int = 60
    _lists: dict[str, _CachedList] = field(default_factory=dict, repr=False)
    #: Rows answered from the cache and rows passed to the recommender.
    hits: int = 0
    misses: int = 0

    def prefetch(self, user_ids: Iterable[str]) -> None:
        """Cache the answers of these users (in batches within the request limits)."""
        wanted = [u for u in dict.fromkeys(str(u) for u in user_ids) if u not in self._lists]
        positions = self.recommender.item_rows
        rows_per_call = max(1, min(MAX_ROWS, self.recommender.max_answer_rows // self.depth))
        for start in range(0, len(wanted), rows_per_call):
            batch = wanted[start : start + rows_per_call]
            answer = self.recommender.recommend(batch, k=self.depth)
            rows = positions.positions(answer["item_id"].to_numpy(dtype=object))
            request = answer["request"].to_numpy(np.int64)
            bounds, ends = request_runs(request)
            scores = answer["score"].to_numpy(np.float64)
            sources = answer["source"].to_numpy(dtype=object)
            for first, end in zip(bounds, ends, strict=True):
                self._lists[batch[request[first]]] = _CachedList(
                    rows[first:end], scores[first:end], sources[first:end]
                )

    def cached(self, user_id: str) -> np.ndarray:
        """The catalogue rows of a prefetched user's answer, best first."""
        return self._lists[user_id].rows

    def recommend(
        self,
        user_ids: Sequence[object] | None,
        k: object = 20,
        exclude_item_ids: object = (),
        recent_item_ids: Sequence[object] | None = None,
    ) -> pd.DataFrame:
        """The same answer as the recommender's (same columns, same order)."""
        size = validate_k(k)
        recommender = self.recommender
        excluded = [str(item) for item in exclude_item_ids or ()]
        found = recommender.item_rows.positions(excluded)
        blocked = np.zeros(len(recommender.item_ids), dtype=bool)
        blocked[found[found >= 0]] = True
        n_rows = len(user_ids) if user_ids is not None else len(recent_item_ids or ())
        answered: list[tuple[int, object, np.ndarray, np.ndarray, np.ndarray]] = []
        passed: list[int] = []
        for row in range(n_rows):
            user = None if user_ids is None else user_ids[row]
            session = None if recent_item_ids is None else recent_item_ids[row]
            cached = self._lists.get(str(user)) if user is not None and not session else None
            chosen = None
            if cached is not None:
                chosen = first_unblocked(cached.rows, size, blocked, self.depth)
            if chosen is None:
                passed.append(row)
                continue
            answered.append(
                (row, user, cached.rows[chosen], cached.scores[chosen], cached.sources[chosen])
            )
        self.hits += len(answered)
        parts = [self._frame(answered)] if answered else []
        if passed:
            self.misses += len(passed)
            usable = found[(found >= 0)]
            usable = usable[recommender.available[usable]]
            answer = recommender.recommend(
                None if user_ids is None else [user_ids[row] for row in passed],
                k=size,
                exclude_item_ids=list(recommender.item_ids[usable]),
                recent_item_ids=None
                if recent_item_ids is None
                else [recent_item_ids[row] for row in passed],
            )
            answer["request"] = np.asarray(passed)[answer["request"].to_numpy(np.int64)]
            parts.append(answer)
        if not parts:
            return pd.DataFrame({name: [] for name in OUTPUT_COLUMNS})
        answer = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return answer.sort_values(["request", "rank"], kind="stable", ignore_index=True)[
            list(OUTPUT_COLUMNS)
        ]

    def _frame(
        self, answered: list[tuple[int, object, np.ndarray, np.ndarray, np.ndarray]]
    ) -> pd.DataFrame:
        """The cached rows' answers as one frame, the recommender's columns."""
        lengths = [len(rows) for _, _, rows, _, _ in answered]
        rows = np.concatenate([rows for _, _, rows, _, _ in answered]).astype(np.int64)
        columns: dict[str, object] = {
            "user_id": np.repeat(np.array([u for _, u, *_ in answered], dtype=object), lengths),
            "rank": np.concatenate([np.arange(1, n + 1) for n in lengths]),
            "item_id": self.recommender.item_ids[rows],
            "score": np.concatenate([scores for *_, scores, _ in answered]),
            "source": np.concatenate([sources for *_, sources in answered]),
        }
        for name in ITEM_DISPLAY_COLUMNS:
            columns[name] = self.recommender.display_columns[name][rows]
        columns["request"] = np.repeat(np.array([row for row, *_ in answered]), lengths)
        return pd.DataFrame(columns)
