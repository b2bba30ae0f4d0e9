"""Positions of ids in a fixed sequence, looked up through a dict.

The served model looks up a few hundred ids per request (a user's exclusions, the
candidates' rows in the feature tables). pandas' `Index.get_indexer` on string ids first
converts the query to a (pyarrow) string array, about a millisecond per call; a dict costs
microseconds and stays linear for large batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class IdPositions:
    """`positions(ids)`: the index of each id in `ids_in_order` (-1 when absent)."""

    def __init__(self, ids_in_order: Iterable[object]) -> None:
        self._positions: dict[object, int] = {}
        for position, value in enumerate(ids_in_order):
            self._positions.setdefault(value, position)

    def __len__(self) -> int:
        return len(self._positions)

    def __contains__(self, value: object) -> bool:
        return value in self._positions

    def positions(self, ids: Sequence[object] | np.ndarray) -> np.ndarray:
        lookup = self._positions.get
        return np.fromiter((lookup(value, -1) for value in ids), np.int64, len(ids))
