"""IdPositions: the dict lookup the served model uses instead of pandas' get_indexer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.ids import IdPositions


def test_positions_match_pandas_get_indexer() -> None:
    ids = np.array([f"item-{i}" for i in range(500)], dtype=object)
    rng = np.random.default_rng(0)
    query = np.concatenate([rng.choice(ids, 300), np.array(["unknown", "", "7"], dtype=object)])
    got = IdPositions(ids).positions(query)
    np.testing.assert_array_equal(got, pd.Index(ids).get_indexer(query))
    assert got.dtype == np.int64 and (got[-3:] == -1).all()


def test_first_occurrence_wins_and_empty_queries_work() -> None:
    lookup = IdPositions(["b", "a", "b"])
    assert len(lookup) == 2 and "a" in lookup and "c" not in lookup
    assert lookup.positions(["b", "a"]).tolist() == [0, 1]
    assert lookup.positions([]).shape == (0,)
