"""The synthetic marketplace generated end to end (users, listings, sessions, into the
canonical tables), and the oracle on its ground truth (`taste_scores`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import SyntheticSourceConfig
from components.data.schema import MARKETPLACE_EVENTS, CanonicalTables, canonicalise
from components.data.synthetic.clock import _US_PER_DAY, _timestamps, _to_us, _utc
from components.data.synthetic.listings import (
    ItemTraits,
    _draw_listings,
    _items_table,
    _supply,
    resolve_supply,
)
from components.data.synthetic.sessions import _end_listings_at_first_purchase, _simulate_events
from components.data.synthetic.users import (
    _DAYS_PER_TASTE_STEP,
    UserTastes,
    _draw_tastes,
    _draw_users,
    _user_item_affinity,
)


@dataclass(frozen=True, eq=False)
class SyntheticMarketplace:
    """The canonical tables plus the ground truth that generated them."""

    tables: CanonicalTables
    tastes: UserTastes
    item_traits: ItemTraits


def generate_marketplace(config: SyntheticSourceConfig) -> SyntheticMarketplace:
    """Simulate the marketplace described by `config`; the same config gives the same data."""
    config = resolve_supply(config)
    rng = np.random.default_rng(config.seed)
    start = _utc(config.start)
    start_us = _to_us(start)
    end_us = start_us + config.n_days * _US_PER_DAY
    n_weeks = (config.n_days + _DAYS_PER_TASTE_STEP - 1) // _DAYS_PER_TASTE_STEP

    users = _draw_users(config, start_us, rng)
    tastes = _draw_tastes(config, users["user_id"].to_numpy(), start, n_weeks, rng)
    items, traits = _draw_listings(config, _supply(config), start_us, rng)
    events = _simulate_events(
        config, tastes, traits, users["created_us"].to_numpy(), items["created_us"], rng
    )
    events, sold_us = _end_listings_at_first_purchase(events, len(traits.item_ids), end_us)

    items_table = _items_table(items, traits, sold_us)
    interactions = pd.DataFrame(
        {
            "user_id": tastes.user_ids[events["user"]],
            "item_id": traits.item_ids[events["item"]],
            "ts": _timestamps(events["ts"]),
            "event": np.asarray(MARKETPLACE_EVENTS, dtype=object)[events["event"]],
            "weight": np.ones(len(events["ts"])),
        }
    )
    users_table = pd.DataFrame(
        {
            "user_id": users["user_id"],
            "created_at": _timestamps(users["created_us"].to_numpy()),
            "country": users["country"],
        }
    )
    tables = canonicalise(
        CanonicalTables(
            interactions=interactions,
            items=items_table,
            users=users_table,
            source={"kind": "synthetic", "config": config.model_dump(mode="json")},
        )
    )
    return SyntheticMarketplace(tables=tables, tastes=tastes, item_traits=traits)


def taste_scores(
    marketplace: SyntheticMarketplace,
    user_ids: np.ndarray | pd.Series | list[str],
    item_ids: np.ndarray | pd.Series | list[str],
    as_of: pd.Timestamp | str,
) -> np.ndarray:
    """True affinity (n_users, n_items) of each user for each item at `as_of`.

    It is the user-and-item part of the simulator's log-probability of viewing an item
    (tastes as of `as_of`, plus the item's appeal) and drives escalation to purchase; it
    leaves out what moves with time (freshness, social proof). Higher is better; values
    are comparable across users.
    """
    users = _positions(marketplace.tastes.user_ids, user_ids, "user")
    items = _positions(marketplace.item_traits.item_ids, item_ids, "item")
    week = marketplace.tastes.week_at(as_of)
    scores = _user_item_affinity(marketplace.tastes, week, users, marketplace.item_traits, items)
    scores += marketplace.item_traits.appeal[items][None, :]
    return scores.astype(np.float64)


def _positions(
    known: np.ndarray, wanted: np.ndarray | pd.Series | list[str], kind: str
) -> np.ndarray:
    """Row of each wanted id in `known`; unknown ids fail with a few examples."""
    wanted_index = pd.Index(np.asarray(wanted, dtype=object))
    rows = pd.Index(known).get_indexer(wanted_index)
    if (rows < 0).any():
        missing = list(wanted_index[rows < 0][:5])
        raise KeyError(f"unknown {kind} ids {missing}: pass ids from the marketplace's tables")
    return rows
