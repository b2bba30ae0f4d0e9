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


def test_ids_longer_than_any_known_one_non_ascii_and_non_string_ids() -> None:
    lookup = IdPositions(["ab", "é-7", "a"])
    assert lookup.positions(["abc", "ab", "é-7", "é", "a"]).tolist() == [-1, 0, 1, -1, 2]
    assert IdPositions(np.array([3, 1, 2])).positions(np.array([2, 5])).tolist() == [2, -1]
    assert IdPositions([]).positions(["x"]).tolist() == [-1] and len(IdPositions([])) == 0


def test_an_id_costs_its_bytes_not_a_python_object() -> None:
    ids = np.array([f"user-{i:07d}" for i in range(100_000)], dtype=object)
    lookup = IdPositions(ids)
    held = lookup._keys.nbytes + lookup._order.nbytes
    assert held <= len(ids) * (len("user-0000000") + 8)
    np.testing.assert_array_equal(lookup.positions(ids[::-7]), np.arange(len(ids))[::-7])
