"""Positions of ids in a fixed sequence, looked up in a sorted array of their UTF-8 bytes.

The served model looks up a few hundred ids per request (a user's exclusions, the
candidates' rows in the feature tables), and the offline stages millions. pandas'
`Index.get_indexer` on string ids first converts the query to a (pyarrow) string array,
about a millisecond per call; a Python dict costs microseconds but about 100 bytes and a
string object per id, several GB at tens of millions of users. Here an id costs its bytes
(padded to the longest id) plus an 8-byte position, and a lookup is a binary search of the
query's encoded ids: microseconds for a request, linear in the batch for large ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

#: Longest user or item id, the one rule for training and serving: validation quarantines
#: rows with a longer id, the served model refuses a request holding one (each answer row
#: repeats its user id, and the id tables pad every id to the longest).
MAX_ID_CHARS = 256


def _encoded(ids: Iterable[object]) -> np.ndarray:
    """Ids as a fixed-width bytes array (UTF-8 of `str(id)`). One Python pass over the ids
    beats numpy's unicode array and its encoding at every size (several times over: a
    served request encodes a dozen lists of a few hundred ids)."""
    encoded = [str(value).encode("utf-8") for value in ids]
    width = max(map(len, encoded), default=0)
    return np.array(encoded, dtype=f"S{max(width, 1)}")


class IdPositions:
    """`positions(ids)`: the index of each id in `ids_in_order` (-1 when absent); an id
    that appears twice answers its first position."""

    def __init__(self, ids_in_order: Iterable[object]) -> None:
        keys = _encoded(ids_in_order)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._order = order.astype(np.int64)
        first = np.ones(len(self._keys), dtype=bool)
        first[1:] = self._keys[1:] != self._keys[:-1]
        self._count = int(first.sum())

    def __len__(self) -> int:
        return self._count

    def __contains__(self, value: object) -> bool:
        return bool(self.positions([value])[0] >= 0)

    def positions(self, ids: Sequence[object] | np.ndarray) -> np.ndarray:
        result = np.full(len(ids), -1, dtype=np.int64)
        if len(ids) == 0 or len(self._keys) == 0:
            return result
        query = _encoded(ids)
        # side="left": the first of equal keys, i.e. the id's first position (stable sort).
        found = np.minimum(np.searchsorted(self._keys, query), len(self._keys) - 1)
        # Equality on the query's own width: a query longer than every key never matches.
        hit = self._keys[found] == query
        result[hit] = self._order[found[hit]]
        return result
