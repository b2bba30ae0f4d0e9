"""The listings of the synthetic marketplace: how many arrive when (supply), who sells
them, their attributes, price, appeal and title, and the canonical items table they make."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from components.config import SyntheticSourceConfig
from components.data.schema import ITEM_COLUMNS
from components.data.synthetic.clock import _US_PER_DAY, _time_of_day, _timestamps
from components.data.synthetic.vocabulary import (
    _COLOUR_SHARES,
    _CONDITION_APPEAL,
    _CONDITION_LOG_PRICE,
    _CONDITION_SHARES,
    _NO_BRAND_SHARE,
    _SIZE_SHARES,
    _STYLE_IN_TITLE,
    _STYLE_SHARES,
    BRAND_NAMES,
    BRANDS,
    CATEGORIES,
    CATEGORY_NAMES,
    COLOURS,
    CONDITIONS,
    SIZE_SYSTEMS,
    SIZE_TOKENS,
    STYLE_NAMES,
    STYLES,
    TIER_LOG_PRICE,
    _normalised,
)

#: Monday..Sunday multipliers: more new listings at weekends.
_WEEKDAY_LISTINGS = np.array([0.9, 0.9, 0.9, 0.95, 1.0, 1.1, 1.25])
_INITIAL_INVENTORY_DAYS = 14
#: Supply per user when the config leaves it null: keeps demand and supply balanced.
_SELLERS_PER_USER = 0.75
_LISTINGS_PER_USER_DAY = 0.1125
_INITIAL_LISTINGS_PER_USER = 0.75


class _Supply(NamedTuple):
    """The supply side of a config, resolved to numbers."""

    n_sellers: int
    listings_per_day: int
    initial_listings: int


@dataclass(frozen=True, eq=False)
class ItemTraits:
    """Each listing's attributes as integer codes into the vocabularies, plus the latent
    ones (style, appeal) that the items table shows only indirectly."""

    item_ids: np.ndarray
    category: np.ndarray
    brand: np.ndarray
    size_token: np.ndarray
    style: np.ndarray
    colour: np.ndarray
    condition: np.ndarray
    #: log(price) - log(typical price of the category).
    relative_log_price: np.ndarray
    #: Appeal to everyone (photos, condition, a good deal).
    appeal: np.ndarray


def resolve_supply(config: SyntheticSourceConfig) -> SyntheticSourceConfig:
    """The config with null supply fields scaled to the number of users (the defaults give
    3,000 sellers, 450 listings a day and 3,000 initial listings for 4,000 users)."""
    return config.model_copy(update=_supply(config)._asdict())


def _supply(config: SyntheticSourceConfig) -> _Supply:
    def scaled(value: int | None, per_user: float, least: int) -> int:
        return value if value is not None else max(least, round(per_user * config.n_users))

    return _Supply(
        n_sellers=scaled(config.n_sellers, _SELLERS_PER_USER, 2),
        listings_per_day=scaled(config.listings_per_day, _LISTINGS_PER_USER_DAY, 5),
        initial_listings=scaled(config.initial_listings, _INITIAL_LISTINGS_PER_USER, 0),
    )


def _draw_listings(
    config: SyntheticSourceConfig, supply: _Supply, start_us: int, rng: np.random.Generator
) -> tuple[pd.DataFrame, ItemTraits]:
    """An initial inventory plus daily arrivals, in creation order, with their attributes."""
    created_us = _draw_creation_times(config, supply, start_us, rng)
    n_items = len(created_us)

    seller = _draw_seller_of_listings(n_items, supply.n_sellers, rng)
    category, style = _draw_category_and_style(seller, supply.n_sellers, rng)
    subcategory, size_token, sub_log_price = _draw_subcategory_and_size(category, rng)
    brand = _draw_brand(category, rng)
    colour = rng.choice(len(COLOURS), n_items, p=_normalised(_COLOUR_SHARES))
    condition = rng.choice(len(CONDITIONS), n_items, p=_normalised(_CONDITION_SHARES))

    tier_of_brand = np.array(
        [TIER_LOG_PRICE[tier] for _, tier, _ in BRANDS] + [TIER_LOG_PRICE["none"]]
    )
    base_log_price = np.array([category.base_log_price for category in CATEGORIES])
    log_price = (
        base_log_price[category]
        + sub_log_price
        + tier_of_brand[brand]
        + np.asarray(_CONDITION_LOG_PRICE)[condition]
        + rng.normal(0.0, 0.35, n_items)
    )
    price = np.maximum(1.0, np.round(np.exp(log_price) * 2.0) / 2.0)
    appeal = rng.normal(0.0, 0.4, n_items) + np.asarray(_CONDITION_APPEAL)[condition]

    width = max(6, len(str(n_items)))
    item_ids = np.array([f"i{index:0{width}d}" for index in range(n_items)], dtype=object)
    seller_width = max(5, len(str(supply.n_sellers)))
    items = {
        "item_id": item_ids,
        "seller_id": np.array([f"s{s:0{seller_width}d}" for s in seller], dtype=object),
        "subcategory": subcategory,
        "price": price,
        "title": _titles(subcategory, brand, style, colour, size_token, condition, rng),
        "created_us": created_us,
    }
    traits = ItemTraits(
        item_ids=item_ids,
        category=category,
        brand=brand,
        size_token=size_token,
        style=style,
        colour=colour,
        condition=condition,
        relative_log_price=(np.log(price) - base_log_price[category]).astype(np.float32),
        appeal=appeal.astype(np.float32),
    )
    return pd.DataFrame(items), traits


def _draw_creation_times(
    config: SyntheticSourceConfig, supply: _Supply, start_us: int, rng: np.random.Generator
) -> np.ndarray:
    """Creation times (int64 microseconds) of an initial inventory listed in the days before
    the start, then of each day's arrivals (more at weekends), in creation order."""
    listed_before = rng.random(supply.initial_listings) * _INITIAL_INVENTORY_DAYS * _US_PER_DAY
    initial = np.sort(start_us - listed_before.astype(np.int64))
    weekdays = (start_us // _US_PER_DAY + 3 + np.arange(config.n_days)) % 7  # 1970-01-01: Thu
    daily_counts = rng.poisson(supply.listings_per_day * _WEEKDAY_LISTINGS[weekdays])
    daily = [
        start_us + day * _US_PER_DAY + np.sort(_time_of_day(count, rng))
        for day, count in enumerate(daily_counts)
    ]
    return np.concatenate([initial, *daily]).astype(np.int64)


def _draw_category_and_style(
    seller: np.ndarray, n_sellers: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Category and latent style of each listing: each seller has a home category and style
    and lists within them with its own focus, otherwise anything by overall shares."""
    n_items = len(seller)
    category_share = _normalised([category.share for category in CATEGORIES])
    home_category = rng.choice(len(CATEGORIES), n_sellers, p=category_share)
    home_style = rng.choice(len(STYLE_NAMES), n_sellers, p=_normalised(_STYLE_SHARES))
    focus = rng.uniform(0.2, 0.9, n_sellers)
    category = np.where(
        rng.random(n_items) < focus[seller],
        home_category[seller],
        rng.choice(len(CATEGORIES), n_items, p=category_share),
    )
    style = np.where(
        rng.random(n_items) < focus[seller],
        home_style[seller],
        rng.choice(len(STYLE_NAMES), n_items, p=_normalised(_STYLE_SHARES)),
    )
    return category, style


def _draw_seller_of_listings(n_items: int, n_sellers: int, rng: np.random.Generator) -> np.ndarray:
    """Long-tailed listing counts: every seller lists at least once, the rest goes by
    lognormal activity (a few power sellers hold a large share), capped at its 99th
    percentile so that no single seller dominates a small marketplace."""
    weights = np.minimum(rng.lognormal(0.0, 2.0, n_sellers), np.exp(2.0 * 2.33))
    guaranteed = 1 if n_items >= n_sellers else 0
    counts = guaranteed + rng.multinomial(n_items - guaranteed * n_sellers, weights / weights.sum())
    return rng.permutation(np.repeat(np.arange(n_sellers), counts))


def _draw_subcategory_and_size(
    category: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A subcategory of the listing's category and a size from that subcategory's system."""
    n_items = len(category)
    subcategory = np.empty(n_items, dtype=object)
    size_token = np.zeros(n_items, dtype=np.int64)
    log_offset = np.zeros(n_items)
    token_start = {}
    position = 0
    for system, sizes in SIZE_SYSTEMS.items():
        token_start[system] = position
        position += len(sizes)
    for index, spec in enumerate(CATEGORIES):
        rows = np.flatnonzero(category == index)
        pick = rng.integers(0, len(spec.subcategories), len(rows))
        for sub_index, (name, system, offset) in enumerate(spec.subcategories):
            chosen = rows[pick == sub_index]
            subcategory[chosen] = name
            log_offset[chosen] = offset
            shares = _normalised(_SIZE_SHARES[system])
            size_token[chosen] = token_start[system] + rng.choice(
                len(shares), len(chosen), p=shares
            )
    return subcategory, size_token, log_offset


def _draw_brand(category: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Popularity-skewed brands among those making the category; some listings unbranded."""
    makes = np.array(
        [[name in categories for name in CATEGORY_NAMES] for _, _, categories in BRANDS]
    ).T
    popularity = 1.0 / np.arange(1, len(BRANDS) + 1)
    cumulative = np.cumsum(makes * popularity[None, :], axis=1)
    cumulative /= cumulative[:, -1:]
    draws = rng.random(len(category))
    brand = (cumulative[category] < draws[:, None]).sum(axis=1)
    unbranded = rng.random(len(category)) < _NO_BRAND_SHARE
    return np.where(unbranded, len(BRAND_NAMES) - 1, np.minimum(brand, len(BRANDS) - 1))


def _titles(
    subcategory: np.ndarray,
    brand: np.ndarray,
    style: np.ndarray,
    colour: np.ndarray,
    size_token: np.ndarray,
    condition: np.ndarray,
    rng: np.random.Generator,
) -> list[str]:
    """Seller-like titles, e.g. "Vintage Levi's denim jacket, blue, M"."""
    n_items = len(subcategory)
    has_style = rng.random(n_items) < _STYLE_IN_TITLE
    word_pick = rng.integers(0, 3, n_items)
    tags_note = (condition == 0) & (rng.random(n_items) < 0.5)
    titles = []
    for index in range(n_items):
        words = []
        if has_style[index]:
            words.append(STYLES[STYLE_NAMES[style[index]]][word_pick[index]])
        if brand[index] != len(BRAND_NAMES) - 1:
            words.append(BRAND_NAMES[brand[index]])
        words.append(subcategory[index] if words else subcategory[index].capitalize())
        title = " ".join(words) + f", {COLOURS[colour[index]]}"
        system, size = SIZE_TOKENS[size_token[index]]
        if system != "one_size":
            title += f", {size}"
        if tags_note[index]:
            title += " - new with tags"
        titles.append(title)
    return titles


def _items_table(items: pd.DataFrame, traits: ItemTraits, sold_us: np.ndarray) -> pd.DataFrame:
    sold = _timestamps(np.maximum(sold_us, 0)).where(sold_us >= 0)
    table = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "seller_id": items["seller_id"],
            "category": np.asarray(CATEGORY_NAMES, dtype=object)[traits.category],
            "subcategory": items["subcategory"],
            "brand": np.asarray(BRAND_NAMES, dtype=object)[traits.brand],
            "size": np.asarray([size for _, size in SIZE_TOKENS], dtype=object)[traits.size_token],
            "condition": np.asarray(CONDITIONS, dtype=object)[traits.condition],
            "colour": np.asarray(COLOURS, dtype=object)[traits.colour],
            "price": items["price"],
            "title": items["title"],
            "created_at": _timestamps(items["created_us"].to_numpy()),
            "sold_at": sold,
        }
    )
    return table[list(ITEM_COLUMNS)]
