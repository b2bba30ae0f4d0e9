"""A recommender's answers computed once per known user, then served past exclusions.

A bundle is immutable, so a known user's ranked list only changes by what a request
excludes (listings sold since, items excluded by the caller): the first `depth` slots of
the answer without exclusions, filtered, are the answer with them as long as at least `k`
survive. Simulations and replays ask the same users again and again while listings sell;
this answers them in microseconds instead of a ranker pass each. Rows that are not a
known user alone (sessions, anonymous rows) and users whose cached slots run short are
passed to the recommender itself, so every answer is the recommender's own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.serving.recommender import OUTPUT_COLUMNS, BundleRecommender
from components.serving.request_parsing import MAX_ROWS, validate_k


@dataclass
class CachedLists:
    """`BundleRecommender.recommend` with each known user's top `depth` answer cached."""

    recommender: BundleRecommender
    depth: int = 60
    _lists: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    #: Rows answered from the cache and rows passed to the recommender.
    hits: int = 0
    misses: int = 0

    def prefetch(self, user_ids: Iterable[str]) -> None:
        """Cache the answers of these users (in batches of the request row limit)."""
        wanted = [
            user for user in dict.fromkeys(str(u) for u in user_ids) if user not in self._lists
        ]
        for start in range(0, len(wanted), MAX_ROWS):
            batch = wanted[start : start + MAX_ROWS]
            answer = self.recommender.recommend(batch, k=self.depth)
            for row, group in answer.groupby("request", sort=True):
                self._lists[batch[int(row)]] = group.reset_index(drop=True)

    def recommend(
        self,
        user_ids: Sequence[object] | None,
        k: object = 20,
        exclude_item_ids: object = (),
        recent_item_ids: Sequence[object] | None = None,
    ) -> pd.DataFrame:
        """The same answer as the recommender's (same columns, same order)."""
        size = validate_k(k)
        excluded = frozenset(str(item) for item in exclude_item_ids or ())
        n_rows = len(user_ids) if user_ids is not None else len(recent_item_ids or ())
        parts: list[pd.DataFrame] = []
        passed: list[int] = []
        for row in range(n_rows):
            user = None if user_ids is None else user_ids[row]
            session = None if recent_item_ids is None else recent_item_ids[row]
            cached = self._lists.get(str(user)) if user is not None and not session else None
            if cached is not None and size <= self.depth:
                kept = cached[~cached["item_id"].isin(excluded)] if excluded else cached
                if len(kept) >= size or len(cached) < self.depth:
                    part = kept.iloc[:size].copy()
                    part["rank"] = np.arange(1, len(part) + 1)
                    part["request"] = row
                    parts.append(part)
                    self.hits += 1
                    continue
            passed.append(row)
        if passed:
            self.misses += len(passed)
            known = self.recommender.item_rows.positions(list(excluded))
            usable = [
                item
                for item, at in zip(excluded, known, strict=True)
                if at >= 0 and self.recommender.available[at]
            ]
            answer = self.recommender.recommend(
                None if user_ids is None else [user_ids[row] for row in passed],
                k=size,
                exclude_item_ids=usable,
                recent_item_ids=None
                if recent_item_ids is None
                else [recent_item_ids[row] for row in passed],
            )
            answer["request"] = np.asarray(passed)[answer["request"].to_numpy(np.int64)]
            parts.append(answer)
        if not parts:
            return pd.DataFrame({name: [] for name in OUTPUT_COLUMNS})
        answer = pd.concat(parts, ignore_index=True)
        return answer.sort_values(["request", "rank"], kind="stable", ignore_index=True)[
            list(OUTPUT_COLUMNS)
        ]
