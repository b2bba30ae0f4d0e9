"""The generated synthetic market continued past its last day, for the market simulation:
more weeks of taste drift and more days of new listings, drawn from streams of the
simulation's own seed (the generated tables stay as they were)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import MarketSimulationConfig, SyntheticSourceConfig
from components.data.synthetic.clock import _US_PER_DAY, _to_us, _utc
from components.data.synthetic.listings import ItemTraits, _draw_listings, _items_table, _supply
from components.data.synthetic.marketplace import SyntheticMarketplace
from components.data.synthetic.users import _DAYS_PER_TASTE_STEP, UserTastes

#: Stream purposes of the per-day generators (common random numbers across policies).
_ARRIVALS, _ORGANIC, _FEED, _LISTINGS = range(4)


@dataclass(frozen=True, eq=False)
class _Extended:
    """Tastes and listings covering the generated period and the simulated one."""

    tastes: UserTastes
    traits: ItemTraits
    created_us: np.ndarray
    new_items: pd.DataFrame
    item_row: pd.Index


def _extend(
    marketplace: SyntheticMarketplace, source: SyntheticSourceConfig, config: MarketSimulationConfig
) -> _Extended:
    """More weeks of taste drift and more days of new listings, drawn from streams of the
    simulation's own seed (the generated tables stay as they were)."""
    tastes, traits = marketplace.tastes, marketplace.item_traits
    end_us = _to_us(_utc(source.start)) + source.n_days * _US_PER_DAY
    total_days = source.n_days + config.days
    weeks = (total_days + _DAYS_PER_TASTE_STEP - 1) // _DAYS_PER_TASTE_STEP
    rng = np.random.default_rng([config.seed, source.seed, 91])
    weekly = list(tastes.category_log_pref)
    while len(weekly) < weeks:
        step = rng.normal(0.0, source.taste_drift, weekly[-1].shape).astype(np.float32)
        drifted = weekly[-1] + step
        weekly.append(np.maximum(drifted - drifted.max(axis=1, keepdims=True), -5.0))
    tastes = UserTastes(**{**tastes.__dict__, "category_log_pref": np.stack(weekly)})

    listing_rng = np.random.default_rng([config.seed, source.seed, _LISTINGS])
    arrivals = source.model_copy(update={"n_days": config.days, "initial_listings": 0})
    items, new_traits = _draw_listings(arrivals, _supply(arrivals), end_us, listing_rng)
    n_old = len(traits.item_ids)
    width = max(6, len(str(n_old + len(items))))
    new_ids = np.array([f"i{n_old + i:0{width}d}" for i in range(len(items))], dtype=object)
    items["item_id"] = new_ids
    merged = ItemTraits(
        **{
            name: np.concatenate([getattr(traits, name), getattr(new_traits, name)])
            for name in traits.__dict__
            if name != "item_ids"
        },
        item_ids=np.concatenate([traits.item_ids, new_ids]),
    )
    old_created = _us(marketplace.tables.items["created_at"])
    created = np.concatenate([old_created, items["created_us"].to_numpy(np.int64)])
    new_table = _items_table(items, new_traits, np.full(len(items), -1))
    return _Extended(tastes, merged, created, new_table, pd.Index(merged.item_ids))


def _us(stamps: pd.Series) -> np.ndarray:
    """int64 microseconds since the epoch of a UTC timestamp column."""
    return stamps.dt.tz_convert("UTC").astype("datetime64[us, UTC]").astype("int64").to_numpy()
