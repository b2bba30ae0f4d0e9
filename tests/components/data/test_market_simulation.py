"""The synthetic market as the users of served lists: it responds to what it is shown,
through the generator's tastes, with one-of-a-kind supply and reproducible draws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import MarketSimulationConfig, SyntheticSourceConfig
from components.data.market_simulation import MarketSimulation
from components.data.synthetic import taste_scores

SOURCE = SyntheticSourceConfig(
    n_users=300, n_sellers=200, n_days=21, listings_per_day=60, initial_listings=300
)


def _simulation(**changes: object) -> MarketSimulation:
    return MarketSimulation.from_source(SOURCE, MarketSimulationConfig(**{"days": 3, **changes}))


@pytest.fixture(scope="module")
def simulation() -> MarketSimulation:
    return _simulation()


def _available(simulation: MarketSimulation, sold: frozenset[str]) -> np.ndarray:
    items = simulation.marketplace.tables.items
    live = items[items["sold_at"].isna()]["item_id"].to_numpy(dtype=object)
    return np.array([item for item in live if item not in sold], dtype=object)


def oracle(simulation: MarketSimulation):
    """The best list a model could serve: the user's top listings by true affinity."""

    def policy(users: list[str], k: int, at: pd.Timestamp, sold: frozenset[str]) -> list[list[str]]:
        items = _available(simulation, sold)
        scores = taste_scores(simulation.marketplace, users, items, at)
        return [list(items[np.argsort(-row)[:k]]) for row in scores]

    return policy


def random_lists(seed: int):
    rng = np.random.default_rng(seed)

    def policy(users, k, at, sold, simulation=None):
        return [list(rng.choice(POOL, k, replace=False)) for _ in users]

    return policy


POOL: np.ndarray = np.empty(0, dtype=object)


def test_better_lists_sell_more_and_the_ground_truth_says_so(simulation) -> None:
    global POOL
    POOL = _available(simulation, frozenset())
    best = simulation.run(oracle(simulation))
    worse = simulation.run(random_lists(0))
    assert best.sessions["purchases"].sum() > 2 * worse.sessions["purchases"].sum()
    assert best.sessions["views"].sum() > worse.sessions["views"].sum()
    users = list(simulation.marketplace.tables.users["user_id"][:50])
    good = oracle(simulation)(users, 20, simulation.start, frozenset())
    bad = [list(reversed(row)) for row in good]
    expected_good = simulation.expected_purchases(users, good, simulation.start)
    expected_bad = simulation.expected_purchases(users, bad, simulation.start)
    assert expected_good.sum() > expected_bad.sum() > 0
    # Sessions: at the generator's rates, about half opening on the recommendations.
    rate = SOURCE.sessions_per_user_day * SOURCE.n_users * 3 * 0.5
    assert 0.5 * rate < len(best.sessions) < 1.5 * rate


def test_a_listing_sells_once_and_is_never_shown_after(simulation) -> None:
    result = simulation.run(oracle(simulation))
    purchases = result.interactions[result.interactions["event"] == "purchase"]
    assert purchases["item_id"].is_unique
    before = simulation.marketplace.tables.items
    already_sold = set(before.loc[before["sold_at"].notna(), "item_id"])
    assert not already_sold & set(purchases["item_id"])
    sold_at = result.items.set_index("item_id")["sold_at"]
    assert (sold_at[purchases["item_id"]].to_numpy() == purchases["ts"].to_numpy()).all()
    assert result.sold_listings_served == 0
    assert result.interactions["ts"].between(result.start, result.end, inclusive="left").all()


def test_a_policy_showing_sold_listings_is_caught_and_they_are_not_shown(simulation) -> None:
    items = simulation.marketplace.tables.items
    sold_before = list(items.loc[items["sold_at"].notna(), "item_id"][:5])
    result = simulation.run(lambda users, k, at, sold: [sold_before for _ in users])
    assert result.sold_listings_served == 5 * len(result.sessions)
    assert (result.sessions["shown"] == 0).all()
    assert not result.interactions["item_id"].isin(sold_before).any()


def test_the_same_seed_gives_the_same_market_and_organic_sessions_do_not_need_a_policy(
    simulation,
) -> None:
    first = simulation.run(oracle(simulation))
    again = simulation.run(oracle(simulation))
    pd.testing.assert_frame_equal(first.interactions, again.interactions)
    organic = simulation.run(None)
    assert len(organic.sessions) == 0
    assert organic.interactions["event"].eq("view").sum() > 500
    # New listings keep arriving past the generated period.
    assert (organic.items["created_at"] >= simulation.start).sum() > 100


def test_a_cascade_buys_at_most_one_listing_from_a_list() -> None:
    cascade = _simulation(position_model="cascade")
    result = cascade.run(oracle(cascade))
    assert result.sessions["purchases"].max() <= 1
    assert result.sessions["purchases"].sum() > 0


def test_a_policy_must_answer_every_session() -> None:
    with pytest.raises(ValueError, match="one \\(possibly empty\\) list per user"):
        _simulation(days=1).run(lambda users, k, at, sold: [])
