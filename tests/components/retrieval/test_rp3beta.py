"""RP3beta against hand-computed walks and its formula computed densely with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import CandidatesConfig, Rp3BetaConfig
from components.retrieval.persistence import load_model, save_model
from components.retrieval.rp3beta import Rp3Beta
from components.retrieval.stack import fit_candidate_models

#: Users x items: u0 {a, b}, u1 {b, c}, u2 {a, b, c}, u3 {c, d}.
HISTORY = {"u0": "ab", "u1": "bc", "u2": "abc", "u3": "cd"}
ITEMS = list("abcd")


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


def _dense_reference(alpha: float, beta: float) -> np.ndarray:
    matrix = np.array(
        [[1.0 if item in HISTORY[user] else 0.0 for item in ITEMS] for user in sorted(HISTORY)]
    )
    user_degree, item_degree = matrix.sum(axis=1), matrix.sum(axis=0)
    walk = (matrix.T / item_degree[:, None]) ** alpha @ (matrix / user_degree[:, None]) ** alpha
    walk = walk * item_degree[None, :] ** -beta
    np.fill_diagonal(walk, 0.0)
    return matrix @ walk


def test_the_plain_walk_matches_the_hand_computed_probabilities() -> None:
    # alpha 1, beta 0: W_ij = 1/d_i sum_u r_ui r_uj / d_u. u0 holds a and b:
    # c: W_ac + W_bc = (1/2)(1/3) + (1/3)(1/2 + 1/3) = 1/6 + 5/18 = 4/9;
    # a: W_ba = (1/3)(1/2 + 1/3) = 5/18 (W_aa is dropped); d: no walk reaches it.
    model = Rp3Beta.fit(_frame(), Rp3BetaConfig(alpha=1.0, beta=0.0))
    got = model.score(["u0"], ["c", "a", "d"])[0]
    np.testing.assert_allclose(got, [4 / 9, 5 / 18, 0.0], rtol=1e-6)
    # beta .5 divides each target's column by the root of its popularity (c: 3 users).
    discounted = Rp3Beta.fit(_frame(), Rp3BetaConfig(alpha=1.0, beta=0.5))
    np.testing.assert_allclose(discounted.score(["u0"], ["c"])[0], [4 / 9 / np.sqrt(3)], rtol=1e-6)


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.0), (0.7, 0.4), (0.5, 0.5)])
def test_scores_are_the_walk_raised_to_alpha_discounted_by_beta(alpha: float, beta: float):
    model = Rp3Beta.fit(_frame(), Rp3BetaConfig(alpha=alpha, beta=beta))
    got = model.score(sorted(HISTORY), ITEMS)
    np.testing.assert_allclose(got, _dense_reference(alpha, beta), rtol=1e-5, atol=1e-6)


def test_neighbours_keep_each_items_strongest_links_only() -> None:
    full = Rp3Beta.fit(_frame(), Rp3BetaConfig(alpha=1.0, beta=0.0))
    pruned = Rp3Beta.fit(_frame(), Rp3BetaConfig(alpha=1.0, beta=0.0, neighbours=1))
    dense_full = full.item_graph.toarray()
    dense_pruned = pruned.item_graph.toarray()
    assert (np.count_nonzero(dense_pruned, axis=1) == 1).all()
    # Row a: W_ab = 5/12 beats W_ac = 1/6; row c: W_cb = (1/3)(1/2 + 1/3) = 5/18 beats
    # W_ca = 1/9 and W_cd = 1/6.
    np.testing.assert_allclose(dense_pruned[0], [0.0, 5 / 12, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(dense_pruned[2], [0.0, 5 / 18, 0.0, 0.0], rtol=1e-6)
    kept = dense_pruned != 0
    np.testing.assert_array_equal(dense_pruned[kept], dense_full[kept])


def test_cold_users_get_popularity_and_unknown_items_zero() -> None:
    model = Rp3Beta.fit(_frame(), Rp3BetaConfig())
    got = model.score(["nobody", "u0"], ["b", "c", "zz"])
    np.testing.assert_allclose(got[0], [1.0, 1.0, 0.0])  # b and c: 3 users each
    assert got[1, 2] == 0.0


def test_saved_model_scores_exactly_like_the_fitted_one(tmp_path: Path) -> None:
    model = Rp3Beta.fit(_frame(), Rp3BetaConfig(neighbours=2))
    save_model(model, tmp_path / "rp3beta")
    assert not list(tmp_path.rglob("*.pkl"))
    loaded = load_model(tmp_path / "rp3beta")
    assert type(loaded) is Rp3Beta and loaded.config == model.config
    users, items = [*sorted(HISTORY), "nobody"], [*ITEMS, "zz"]
    np.testing.assert_array_equal(loaded.score(users, items), model.score(users, items))


def test_the_stack_fits_it_from_its_settings() -> None:
    settings = CandidatesConfig(sources=("rp3beta",), rp3beta={"alpha": 0.5, "beta": 0.0})
    models = fit_candidate_models(_frame(), settings, None)
    assert set(models) == {"rp3beta"} and isinstance(models["rp3beta"], Rp3Beta)
    np.testing.assert_allclose(
        models["rp3beta"].score(sorted(HISTORY), ITEMS), _dense_reference(0.5, 0.0), rtol=1e-5
    )
