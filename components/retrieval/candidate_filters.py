"""Candidate filters: what no candidate source may return, for whom.

`CandidateFilter` holds the items a user must not get again (`build_exclusions`: those
they bought; every item of their history for rating / fixed-split data), the items
available at the cut-off (sold and not-yet-listed ones are not) and the blocked ones.
Every source in `components.retrieval.candidate_sources` applies it, and the merge in
`components.retrieval.candidate_merge` applies it again, so a source built on stale data (an
Annoy index from the last refresh) cannot leak a listing sold since.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.config import CandidatesConfig
from components.ids import IdPositions


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
        # Set lookups: pandas' isin on (pyarrow-backed) strings converts the whole column
        # on every request.
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
            keep &= ~isin_sorted(user_codes.astype(np.int64) * width + item_codes, banned)
        return keep


def isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(values.shape, dtype=bool)
    position = np.searchsorted(sorted_keys, values)
    position = np.minimum(position, len(sorted_keys) - 1)
    return sorted_keys[position] == values
