"""GF-CF against its formula computed densely with numpy on a hand-made matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import GraphFilterConfig
from components.retrieval.graph_filter import GraphFilter

#: Users x items: u0 {a, b}, u1 {b, c}, u2 {a, b, c}, u3 {c, d}.
HISTORY = {"u0": "ab", "u1": "bc", "u2": "abc", "u3": "cd"}


def _frame() -> pd.DataFrame:
    rows = [(user, item) for user, items in HISTORY.items() for item in items]
    return pd.DataFrame(
        {
            "user_id": [user for user, _ in rows],
            "item_id": [item for _, item in rows],
            "ts": pd.Series(pd.NaT, index=range(len(rows)), dtype="datetime64[us, UTC]"),
            "event": "interaction",
            "weight": 1.0,
        }
    )


def _dense_reference(alpha: float, factors: int) -> np.ndarray:
    items = sorted({item for items in HISTORY.values() for item in items})
    matrix = np.array(
        [[1.0 if item in HISTORY[user] else 0.0 for item in items] for user in sorted(HISTORY)]
    )
    user_degree, item_degree = matrix.sum(axis=1), matrix.sum(axis=0)
    normalised = matrix / np.sqrt(user_degree)[:, None] / np.sqrt(item_degree)[None, :]
    graph = normalised.T @ normalised
    _, _, right = np.linalg.svd(normalised)
    top = right[:factors]
    low_pass = np.diag(item_degree**-0.5) @ top.T @ top @ np.diag(item_degree**0.5)
    return matrix @ graph + alpha * matrix @ low_pass


def test_scores_are_the_linear_filter_plus_alpha_times_the_ideal_low_pass() -> None:
    for alpha, factors in ((0.0, 2), (0.3, 2), (1.0, 3)):
        model = GraphFilter.fit(_frame(), GraphFilterConfig(alpha=alpha, factors=factors))
        got = model.score(sorted(HISTORY), list("abcd"))
        np.testing.assert_allclose(got, _dense_reference(alpha, factors), rtol=1e-4, atol=1e-5)


def test_refitting_gives_the_same_scores() -> None:
    first = GraphFilter.fit(_frame(), GraphFilterConfig(factors=2)).score(["u0"], list("abcd"))
    again = GraphFilter.fit(_frame(), GraphFilterConfig(factors=2)).score(["u0"], list("abcd"))
    np.testing.assert_array_equal(first, again)
