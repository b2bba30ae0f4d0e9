"""The built-in synthetic second-hand fashion marketplace: the demo's default data.

Why synthetic: the ground truth (each user's latent tastes) is known, so an oracle gives an
upper bound for every model, and the data carry what the pipeline must handle on a real
marketplace: one-of-a-kind listings that sell once within days, long-tailed sellers, users
and listings arriving all the time, and tastes that drift. Everything is drawn from one
seeded numpy Generator, so a config always gives identical tables.

How events arise: the period is simulated day by day and, inside a day, in two-hour slots
(vectorised over the slot's sessions). Each session has an intent category drawn from the
user's current category preferences and samples listings of it, among those the slot's
feed surfaces (the available listings of that category, or `feed_depth` of them drawn by
freshness, popularity and appeal when more are live, so that a session's cost does not grow
with the catalogue), with probability proportional to
exp(taste affinity) x popularity boost (social proof) x freshness decay. Each view may
escalate to like, save, add_to_bag or purchase with probabilities increasing with the
affinity; a deeper event always comes seconds to minutes after its view. The first
purchase of a listing ends it: `sold_at` is that purchase's timestamp and no event on the
listing comes after it; listings that never sell stay available (nothing is delisted).
Every interaction has weight 1.0: the strength of a signal is its `event` type, and how
much each type counts is a modelling choice (e.g. PopularityConfig.event_weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from components.config import SyntheticSourceConfig
from components.data.schema import (
    ITEM_COLUMNS,
    MARKETPLACE_EVENTS,
    CanonicalTables,
    canonicalise,
)

# --- The catalogue vocabulary --------------------------------------------------------

SIZE_SYSTEMS: dict[str, tuple[str, ...]] = {
    "alpha": ("XS", "S", "M", "L", "XL", "XXL"),
    "waist": ("W26", "W28", "W30", "W32", "W34", "W36", "W38"),
    "eu_shoe": tuple(str(size) for size in range(35, 47)),
    "one_size": ("one size",),
}
#: Population share of each size inside its system (what sellers list, what users wear).
_SIZE_SHARES: dict[str, tuple[float, ...]] = {
    "alpha": (0.09, 0.24, 0.3, 0.2, 0.11, 0.06),
    "waist": (0.08, 0.16, 0.22, 0.22, 0.16, 0.1, 0.06),
    "eu_shoe": (0.03, 0.06, 0.1, 0.12, 0.12, 0.11, 0.1, 0.1, 0.1, 0.08, 0.05, 0.03),
    "one_size": (1.0,),
}
SIZE_TOKENS: tuple[tuple[str, str], ...] = tuple(
    (system, size) for system, sizes in SIZE_SYSTEMS.items() for size in sizes
)


@dataclass(frozen=True)
class _Category:
    name: str
    share: float
    #: Log of the typical price (EUR) of a mid-tier listing in good condition.
    base_log_price: float
    #: (subcategory, size system, log-price offset).
    subcategories: tuple[tuple[str, str, float], ...]


CATEGORIES: tuple[_Category, ...] = (
    _Category(
        "tops",
        0.2,
        np.log(12.0),
        (
            ("t-shirt", "alpha", -0.2),
            ("shirt", "alpha", 0.1),
            ("blouse", "alpha", 0.05),
            ("sweater", "alpha", 0.25),
            ("hoodie", "alpha", 0.2),
            ("cardigan", "alpha", 0.2),
        ),
    ),
    _Category(
        "bottoms",
        0.15,
        np.log(18.0),
        (
            ("jeans", "waist", 0.1),
            ("trousers", "waist", 0.0),
            ("skirt", "alpha", -0.1),
            ("shorts", "alpha", -0.3),
        ),
    ),
    _Category(
        "dresses",
        0.11,
        np.log(20.0),
        (
            ("mini dress", "alpha", -0.1),
            ("midi dress", "alpha", 0.05),
            ("maxi dress", "alpha", 0.1),
            ("jumpsuit", "alpha", 0.0),
        ),
    ),
    _Category(
        "outerwear",
        0.1,
        np.log(35.0),
        (
            ("jacket", "alpha", 0.0),
            ("coat", "alpha", 0.3),
            ("denim jacket", "alpha", -0.1),
            ("puffer jacket", "alpha", 0.2),
            ("blazer", "alpha", -0.1),
            ("trench coat", "alpha", 0.3),
        ),
    ),
    _Category(
        "shoes",
        0.14,
        np.log(30.0),
        (
            ("sneakers", "eu_shoe", 0.0),
            ("boots", "eu_shoe", 0.2),
            ("heels", "eu_shoe", 0.0),
            ("sandals", "eu_shoe", -0.3),
            ("loafers", "eu_shoe", 0.05),
        ),
    ),
    _Category(
        "bags",
        0.09,
        np.log(25.0),
        (
            ("tote bag", "one_size", 0.0),
            ("crossbody bag", "one_size", 0.05),
            ("backpack", "one_size", 0.0),
            ("clutch", "one_size", -0.1),
            ("shoulder bag", "one_size", 0.1),
        ),
    ),
    _Category(
        "accessories",
        0.13,
        np.log(10.0),
        (
            ("scarf", "one_size", 0.0),
            ("hat", "one_size", -0.1),
            ("belt", "one_size", 0.0),
            ("sunglasses", "one_size", 0.3),
            ("jewellery", "one_size", 0.1),
            ("wallet", "one_size", 0.1),
        ),
    ),
    _Category(
        "sportswear",
        0.08,
        np.log(15.0),
        (
            ("leggings", "alpha", -0.1),
            ("track jacket", "alpha", 0.15),
            ("sports bra", "alpha", -0.2),
            ("running top", "alpha", -0.1),
            ("tracksuit", "alpha", 0.25),
        ),
    ),
)
CATEGORY_NAMES = tuple(category.name for category in CATEGORIES)

#: Log-price offset of each brand tier relative to a mid-tier brand.
TIER_LOG_PRICE = {"none": -0.45, "budget": -0.35, "mid": 0.1, "premium": 0.8, "luxury": 2.1}
NO_BRAND = "No brand"
#: Share of listings without a brand, whatever the category.
_NO_BRAND_SHARE = 0.18

_FASHION = ("tops", "bottoms", "dresses", "outerwear", "accessories")
_SPORT = ("shoes", "sportswear", "tops", "outerwear", "bags", "accessories")
#: (brand, tier, categories it makes), most popular first (popularity ~ 1 / rank).
BRANDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Zara", "budget", (*_FASHION, "shoes", "bags")),
    ("H&M", "budget", (*_FASHION, "sportswear")),
    ("Nike", "mid", _SPORT),
    ("Adidas", "mid", _SPORT),
    ("Shein", "budget", _FASHION),
    ("Mango", "mid", (*_FASHION, "shoes", "bags")),
    ("Levi's", "mid", ("bottoms", "outerwear", "tops")),
    ("Primark", "budget", (*_FASHION, "shoes", "sportswear")),
    ("Bershka", "budget", (*_FASHION, "shoes")),
    ("Pull&Bear", "budget", (*_FASHION, "shoes")),
    ("Uniqlo", "mid", ("tops", "bottoms", "outerwear", "accessories")),
    ("Stradivarius", "budget", (*_FASHION, "shoes")),
    ("Converse", "mid", ("shoes",)),
    ("Vans", "mid", ("shoes", "tops", "accessories")),
    ("New Balance", "mid", ("shoes", "sportswear")),
    ("Tommy Hilfiger", "mid", (*_FASHION, "bags")),
    ("Ralph Lauren", "premium", ("tops", "bottoms", "outerwear", "dresses", "accessories")),
    ("The North Face", "premium", ("outerwear", "sportswear", "bags", "tops")),
    ("Dr. Martens", "mid", ("shoes", "bags")),
    ("Puma", "mid", ("shoes", "sportswear", "tops")),
    ("COS", "mid", _FASHION),
    ("Massimo Dutti", "mid", (*_FASHION, "shoes")),
    ("Carhartt", "mid", ("tops", "bottoms", "outerwear", "accessories")),
    ("Calvin Klein", "mid", (*_FASHION, "bags")),
    ("Lacoste", "premium", ("tops", "shoes", "outerwear", "sportswear")),
    ("Decathlon", "budget", ("sportswear", "shoes", "outerwear", "bags")),
    ("Birkenstock", "mid", ("shoes",)),
    ("Veja", "mid", ("shoes",)),
    ("& Other Stories", "mid", _FASHION),
    ("Arket", "mid", _FASHION),
    ("Sézane", "premium", ("tops", "dresses", "bottoms", "outerwear", "bags")),
    ("Sandro", "premium", ("tops", "dresses", "bottoms", "outerwear")),
    ("Maje", "premium", ("tops", "dresses", "bottoms", "outerwear", "bags")),
    ("Ganni", "premium", ("tops", "dresses", "bottoms", "outerwear", "shoes")),
    ("Patagonia", "premium", ("outerwear", "sportswear", "tops", "bags")),
    ("Barbour", "premium", ("outerwear",)),
    ("Longchamp", "premium", ("bags", "accessories")),
    ("Ray-Ban", "premium", ("accessories",)),
    ("Acne Studios", "premium", ("tops", "bottoms", "outerwear", "accessories")),
    ("Stone Island", "premium", ("tops", "outerwear", "bottoms")),
    ("Michael Kors", "premium", ("bags", "accessories", "shoes")),
    ("Burberry", "luxury", ("outerwear", "accessories", "bags", "tops")),
    ("Gucci", "luxury", ("bags", "accessories", "shoes", "tops")),
    ("Prada", "luxury", ("bags", "shoes", "accessories")),
    ("Louis Vuitton", "luxury", ("bags", "accessories")),
    ("Saint Laurent", "luxury", ("bags", "shoes", "accessories")),
    ("Chanel", "luxury", ("bags", "accessories", "shoes")),
    ("Hermès", "luxury", ("bags", "accessories")),
)
#: Brand vocabulary: the branded ones, then NO_BRAND last.
BRAND_NAMES = (*(brand for brand, _, _ in BRANDS), NO_BRAND)

CONDITIONS = ("new_with_tags", "like_new", "good", "fair")
_CONDITION_SHARES = (0.12, 0.33, 0.42, 0.13)
_CONDITION_LOG_PRICE = (0.3, 0.12, 0.0, -0.35)
#: Better condition, better photos: a small boost to a listing's appeal to everyone.
_CONDITION_APPEAL = (0.25, 0.1, 0.0, -0.35)

COLOURS = (
    "black",
    "white",
    "blue",
    "grey",
    "beige",
    "navy",
    "brown",
    "green",
    "red",
    "pink",
    "multicolour",
    "yellow",
    "purple",
    "orange",
)
_COLOUR_SHARES = (0.2, 0.1, 0.12, 0.08, 0.08, 0.06, 0.06, 0.06, 0.05, 0.06, 0.06, 0.03, 0.02, 0.02)

#: Latent styles; a listing's style shows only through the words of its title (sometimes).
STYLES: dict[str, tuple[str, ...]] = {
    "vintage": ("Vintage", "Retro", "90s"),
    "streetwear": ("Oversized", "Streetwear", "Baggy"),
    "minimalist": ("Minimalist", "Basic", "Clean-cut"),
    "boho": ("Boho", "Floral", "Flowy"),
    "sporty": ("Sporty", "Athletic", "Performance"),
    "classic": ("Classic", "Timeless", "Tailored"),
    "y2k": ("Y2K", "Low-rise", "Glitter"),
    "preppy": ("Preppy", "Collegiate", "Striped"),
}
STYLE_NAMES = tuple(STYLES)
_STYLE_SHARES = (0.16, 0.15, 0.15, 0.1, 0.12, 0.14, 0.1, 0.08)
#: Share of titles that carry a style word.
_STYLE_IN_TITLE = 0.75

COUNTRIES = ("FR", "DE", "IT", "ES", "GB", "NL", "PL", "BE")
_COUNTRY_SHARES = (0.3, 0.15, 0.12, 0.12, 0.1, 0.08, 0.07, 0.06)

# --- Behaviour parameters ------------------------------------------------------------

_US_PER_DAY = 86_400_000_000
_US_PER_SECOND = 1_000_000
_SLOT_HOURS = 2
_DAYS_PER_TASTE_STEP = 7
#: Relative activity by hour of day (UTC): quiet nights, busy evenings.
_HOURLY_ACTIVITY = np.array(
    [
        *(0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 0.8, 0.9, 0.9, 1.0),
        *(1.2, 1.1, 0.9, 0.9, 1.0, 1.1, 1.3, 1.6, 1.8, 1.7, 1.2, 0.6),
    ]
)
#: Monday..Sunday multipliers: more browsing and more new listings at weekends.
_WEEKDAY_SESSIONS = np.array([0.92, 0.92, 0.95, 0.98, 1.03, 1.1, 1.1])
_WEEKDAY_LISTINGS = np.array([0.9, 0.9, 0.9, 0.95, 1.0, 1.1, 1.25])
_INITIAL_INVENTORY_DAYS = 14
#: Floor on the lowest category log-preference (a user never fully ignores a category).
_CATEGORY_LOG_FLOOR = -5.0
_STYLE_WEIGHT = 0.8
_COLOUR_WEIGHT = 0.4
_BRAND_WEIGHT = 1.2
_PRICE_FIT_FLOOR = -6.0
#: Size fit: own size, one step away, further (one-size items always fit).
_SIZE_FIT = (0.0, -1.0, -3.0)
#: Pull of a browse session's sampling towards the user's taste.
_BROWSE_TASTE = 0.3
#: Exponent of the social-proof boost (1 + likes + saves + bags so far).
_POPULARITY_EXPONENT = 0.4
_FRESHNESS_FLOOR = 0.03
#: Escalation logits: intercept + slope * (affinity - _AFFINITY_CENTRE).
_AFFINITY_CENTRE = -1.5
_ESCALATION = {"like": (-2.3, 0.6), "save": (-3.3, 0.6), "bag": (-3.4, 0.7), "buy": (-3.4, 0.8)}
#: Share of purchases that go through the bag first (the others are "buy now").
_BUY_VIA_BAG = 0.6
_EVENT_CODES = {event: code for code, event in enumerate(MARKETPLACE_EVENTS)}
#: Supply per user when the config leaves it null: keeps demand and supply balanced.
_SELLERS_PER_USER = 0.75
_LISTINGS_PER_USER_DAY = 0.1125
_INITIAL_LISTINGS_PER_USER = 0.75


# --- Public data classes -------------------------------------------------------------


class _Supply(NamedTuple):
    """The supply side of a config, resolved to numbers."""

    n_sellers: int
    listings_per_day: int
    initial_listings: int


@dataclass(frozen=True, eq=False)
class UserTastes:
    """Each user's latent tastes (the ground truth), rows aligned with `user_ids`.

    Category preferences drift: `category_log_pref[w]` holds them during week `w` from the
    start. All log-preferences are relative to the user's favourite (so <= 0).
    """

    user_ids: np.ndarray
    start: pd.Timestamp
    #: (n_weeks, n_users, n_categories), over CATEGORY_NAMES.
    category_log_pref: np.ndarray
    #: (n_users, n_brands), over BRAND_NAMES: 1 for the brands a user likes, else 0.
    brand_affinity: np.ndarray
    #: (n_users, n_styles), over STYLE_NAMES.
    style_log_pref: np.ndarray
    #: (n_users, n_colours), over COLOURS.
    colour_log_pref: np.ndarray
    #: (n_users, n_size_tokens), over SIZE_TOKENS: 0 for the user's size, negative otherwise.
    size_fit: np.ndarray
    #: Centre and width of the user's price band, in log-price relative to the category's
    #: typical price (a thrifty user is thrifty in every category).
    price_log_mean: np.ndarray
    price_log_width: np.ndarray
    #: Relative activity level (mean 1): how often the user opens a session.
    activity: np.ndarray

    def week_at(self, as_of: pd.Timestamp | str) -> int:
        """Index of the taste week in force at `as_of` (clipped to the simulated weeks)."""
        elapsed = _utc(as_of) - self.start
        week = int(np.floor(elapsed / pd.Timedelta(days=_DAYS_PER_TASTE_STEP)))
        return int(np.clip(week, 0, self.category_log_pref.shape[0] - 1))


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


@dataclass(frozen=True, eq=False)
class SyntheticMarketplace:
    """The canonical tables plus the ground truth that generated them."""

    tables: CanonicalTables
    tastes: UserTastes
    item_traits: ItemTraits


# --- Public functions ----------------------------------------------------------------


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


def resolve_supply(config: SyntheticSourceConfig) -> SyntheticSourceConfig:
    """The config with null supply fields scaled to the number of users (the defaults give
    3,000 sellers, 450 listings a day and 3,000 initial listings for 4,000 users)."""
    return config.model_copy(update=_supply(config)._asdict())


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


# --- Users and tastes ----------------------------------------------------------------


def _draw_users(
    config: SyntheticSourceConfig, start_us: int, rng: np.random.Generator
) -> pd.DataFrame:
    """Users who joined before the start (account age up to a year) and during the period."""
    n_initial = round(config.n_users * config.initial_user_share)
    before = start_us - (rng.random(n_initial) * 365 * _US_PER_DAY).astype(np.int64)
    during = start_us + (rng.random(config.n_users - n_initial) * config.n_days * _US_PER_DAY)
    created_us = np.sort(np.concatenate([before, during.astype(np.int64)]))
    width = max(6, len(str(config.n_users)))
    return pd.DataFrame(
        {
            "user_id": [f"u{index:0{width}d}" for index in range(config.n_users)],
            "created_us": created_us,
            "country": np.asarray(COUNTRIES)[
                rng.choice(len(COUNTRIES), config.n_users, p=_normalised(_COUNTRY_SHARES))
            ],
        }
    )


def _draw_tastes(
    config: SyntheticSourceConfig,
    user_ids: np.ndarray,
    start: pd.Timestamp,
    n_weeks: int,
    rng: np.random.Generator,
) -> UserTastes:
    """Sparse category tastes (Dirichlet) that random-walk weekly; fixed brands, sizes,
    styles, colours and price band."""
    n_users = len(user_ids)
    category_share = np.array([category.share for category in CATEGORIES])
    category_logits = np.log(rng.dirichlet(2.4 * category_share / category_share.sum(), n_users))
    category_logits = np.maximum(category_logits, _CATEGORY_LOG_FLOOR - 2.0)
    weekly = [category_logits]
    for _ in range(n_weeks - 1):
        weekly.append(weekly[-1] + rng.normal(0.0, config.taste_drift, category_logits.shape))
    category_log_pref = np.stack([_relative_log_pref(logits) for logits in weekly])

    style_log_pref = _STYLE_WEIGHT * _relative_log_pref(
        np.log(rng.dirichlet(np.full(len(STYLE_NAMES), 0.5), n_users) + 1e-12), floor=-4.0
    )
    colour_log_pref = _COLOUR_WEIGHT * _relative_log_pref(
        np.log(rng.dirichlet(np.full(len(COLOURS), 1.5), n_users) + 1e-12), floor=-4.0
    )
    price_log_mean = rng.normal(-0.1, 0.5, n_users)
    price_log_width = rng.uniform(0.35, 0.8, n_users)
    brand_affinity = _draw_brand_affinity(price_log_mean, rng)
    size_fit = _draw_size_fit(n_users, rng)
    activity = rng.lognormal(0.0, 0.8, n_users)
    return UserTastes(
        user_ids=np.asarray(user_ids, dtype=object),
        start=start,
        category_log_pref=category_log_pref.astype(np.float32),
        brand_affinity=brand_affinity.astype(np.float32),
        style_log_pref=style_log_pref.astype(np.float32),
        colour_log_pref=colour_log_pref.astype(np.float32),
        size_fit=size_fit.astype(np.float32),
        price_log_mean=price_log_mean.astype(np.float32),
        price_log_width=price_log_width.astype(np.float32),
        activity=activity / activity.mean(),
    )


def _relative_log_pref(logits: np.ndarray, floor: float = _CATEGORY_LOG_FLOOR) -> np.ndarray:
    """Log-softmax shifted so each user's favourite is 0, floored: shift-invariant for
    sampling, and comparable across users."""
    return np.maximum(logits - logits.max(axis=1, keepdims=True), floor)


def _draw_brand_affinity(price_log_mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A few liked brands per user, popular ones and those of the user's price tier first."""
    n_users, n_branded = len(price_log_mean), len(BRANDS)
    tier_price = np.array([TIER_LOG_PRICE[tier] for _, tier, _ in BRANDS])
    popularity = 1.0 / np.arange(1, n_branded + 1)
    tier_fit = np.exp(-((tier_price[None, :] - price_log_mean[:, None]) ** 2) / (2 * 0.7**2))
    weights = popularity[None, :] * tier_fit
    # Sampling without replacement: the k largest Gumbel-perturbed log-weights.
    keys = np.log(weights) + rng.gumbel(size=weights.shape)
    n_liked = np.minimum(1 + rng.poisson(2.5, n_users), n_branded)
    order = np.argsort(-keys, axis=1)
    liked = np.arange(n_branded)[None, :] < n_liked[:, None]
    affinity = np.zeros((n_users, len(BRAND_NAMES)))
    np.put_along_axis(affinity[:, :n_branded], order, liked * _BRAND_WEIGHT, axis=1)
    return affinity


def _draw_size_fit(n_users: int, rng: np.random.Generator) -> np.ndarray:
    """Each user's own size in every system, correlated across systems through one body
    size; fit is 0 at the own size, worse one step away, bad further."""
    alpha_share = _normalised(_SIZE_SHARES["alpha"])
    body = rng.choice(len(alpha_share), n_users, p=alpha_share)
    own = {
        "alpha": body,
        "waist": np.clip(body + rng.integers(-1, 2, n_users), 0, 6),
        "eu_shoe": np.clip(np.round(1.8 * body + rng.normal(2.5, 1.7, n_users)), 0, 11),
        "one_size": np.zeros(n_users),
    }
    columns = []
    for system, sizes in SIZE_SYSTEMS.items():
        distance = np.abs(np.arange(len(sizes))[None, :] - own[system][:, None])
        fit = np.where(distance == 0, _SIZE_FIT[0], np.where(distance == 1, *_SIZE_FIT[1:]))
        columns.append(fit)
    return np.concatenate(columns, axis=1)


# --- Listings ------------------------------------------------------------------------


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
    listed_before = rng.random(supply.initial_listings) * _INITIAL_INVENTORY_DAYS * _US_PER_DAY
    initial = np.sort(start_us - listed_before.astype(np.int64))
    weekdays = (start_us // _US_PER_DAY + 3 + np.arange(config.n_days)) % 7  # 1970-01-01: Thu
    daily_counts = rng.poisson(supply.listings_per_day * _WEEKDAY_LISTINGS[weekdays])
    daily = [
        start_us + day * _US_PER_DAY + np.sort(_time_of_day(count, rng))
        for day, count in enumerate(daily_counts)
    ]
    created_us = np.concatenate([initial, *daily]).astype(np.int64)
    n_items = len(created_us)

    seller = _draw_seller_of_listings(n_items, supply.n_sellers, rng)
    category_share = _normalised([category.share for category in CATEGORIES])
    home_category = rng.choice(len(CATEGORIES), supply.n_sellers, p=category_share)
    home_style = rng.choice(len(STYLE_NAMES), supply.n_sellers, p=_normalised(_STYLE_SHARES))
    focus = rng.uniform(0.2, 0.9, supply.n_sellers)
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


# --- Events --------------------------------------------------------------------------


def _user_item_affinity(
    tastes: UserTastes,
    week: int,
    users: np.ndarray,
    traits: ItemTraits,
    items: np.ndarray,
) -> np.ndarray:
    """Taste part of the affinity (len(users), len(items)): category + brand + style +
    colour + size fit + price fit. One implementation for the simulator and the oracle."""
    scores = tastes.category_log_pref[week][users][:, traits.category[items]]
    scores += tastes.brand_affinity[users][:, traits.brand[items]]
    scores += tastes.style_log_pref[users][:, traits.style[items]]
    scores += tastes.colour_log_pref[users][:, traits.colour[items]]
    scores += tastes.size_fit[users][:, traits.size_token[items]]
    distance = traits.relative_log_price[items][None, :] - tastes.price_log_mean[users][:, None]
    distance /= tastes.price_log_width[users][:, None]
    scores += np.maximum(-0.5 * distance * distance, _PRICE_FIT_FLOOR)
    return scores


def _simulate_events(
    config: SyntheticSourceConfig,
    tastes: UserTastes,
    traits: ItemTraits,
    user_created_us: np.ndarray,
    item_created_us: pd.Series,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Day by day, slot by slot: sessions sample available listings, views escalate."""
    created_us = item_created_us.to_numpy()
    n_items = len(created_us)
    start_us = _to_us(tastes.start)
    sold_us = np.full(n_items, np.iinfo(np.int64).max)
    engagement = np.zeros(n_items)
    slot_us = _SLOT_HOURS * 3_600 * _US_PER_SECOND
    chunks: list[dict[str, np.ndarray]] = []
    for day in range(config.n_days):
        day_start = start_us + day * _US_PER_DAY
        week = day // _DAYS_PER_TASTE_STEP
        weekday = (day_start // _US_PER_DAY + 3) % 7
        rate = config.sessions_per_user_day * tastes.activity * _WEEKDAY_SESSIONS[weekday]
        rate = np.where(user_created_us < day_start + _US_PER_DAY, rate, 0.0)
        session_user = np.repeat(np.arange(len(rate)), rng.poisson(rate))
        session_ts = day_start + _time_of_day(len(session_user), rng)
        joined = session_ts >= user_created_us[session_user]
        session_user, session_ts = session_user[joined], session_ts[joined]
        order = np.argsort(session_ts, kind="stable")
        session_user, session_ts = session_user[order], session_ts[order]
        session_slot = (session_ts - day_start) // slot_us
        for slot in np.unique(session_slot):
            in_slot = session_slot == slot
            slot_start = day_start + slot * slot_us
            n_created = int(np.searchsorted(created_us, slot_start, side="left"))
            pool = np.flatnonzero(sold_us[:n_created] >= slot_start)
            if len(pool) == 0:
                continue
            chunk = _simulate_slot(
                config,
                tastes,
                traits,
                week,
                session_user[in_slot],
                session_ts[in_slot],
                pool,
                (slot_start - created_us[pool]) / _US_PER_DAY,
                engagement[pool],
                rng,
            )
            bought = chunk["item"][chunk["event"] == _EVENT_CODES["purchase"]]
            bought_ts = chunk["ts"][chunk["event"] == _EVENT_CODES["purchase"]]
            np.minimum.at(sold_us, bought, bought_ts)
            engaged = (chunk["event"] > 0) & (chunk["event"] < _EVENT_CODES["purchase"])
            np.add.at(engagement, chunk["item"][engaged], 1.0)
            chunks.append(chunk)
    if not chunks:
        return _escalate(*(np.zeros(0, dtype=np.int64) for _ in range(3)), np.zeros(0), rng)
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}


def _simulate_slot(
    config: SyntheticSourceConfig,
    tastes: UserTastes,
    traits: ItemTraits,
    week: int,
    session_user: np.ndarray,
    session_ts: np.ndarray,
    pool: np.ndarray,
    age_days: np.ndarray,
    engagement: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Views of one slot's sessions among the pool of available listings, and the deeper
    events they lead to.

    Each session has an intent category, drawn from the user's category preferences
    (blended with supply for browse sessions), and samples listings of that category in
    the slot's feed (`_feed`) with probability proportional to
    exp(taste x pull + appeal) x social proof x freshness.
    """
    n_sessions = len(session_user)
    pull = np.where(rng.random(n_sessions) < config.browse_share, _BROWSE_TASTE, 1.0)
    pool_category = traits.category[pool]
    supply = np.bincount(pool_category, minlength=len(CATEGORIES)) / len(pool)
    intent_logits = (
        pull[:, None] * tastes.category_log_pref[week][session_user]
        + (1.0 - pull[:, None]) * np.log(np.maximum(supply, 1e-12))[None, :]
    )
    intent_logits[:, supply == 0] = -np.inf
    intent = np.argmax(intent_logits + rng.gumbel(size=intent_logits.shape), axis=1)
    n_views = 1 + rng.poisson(max(config.views_per_session - 1.0, 0.0), n_sessions)
    item_prior = (
        traits.appeal[pool]
        + _POPULARITY_EXPONENT * np.log1p(engagement)
        + np.log(np.exp(-age_days / config.freshness_days) + _FRESHNESS_FLOOR)
    ).astype(np.float32)

    sessions, items, tastes_of_views = [], [], []
    for category in np.unique(intent):
        rows = np.flatnonzero(intent == category)
        columns = _feed(np.flatnonzero(pool_category == category), item_prior, config, rng)
        taste = _user_item_affinity(tastes, week, session_user[rows], traits, pool[columns])
        logits = pull[rows, None].astype(np.float32) * taste + item_prior[None, columns]
        row, column = _sample_without_repeats(logits, n_views[rows], rng)
        sessions.append(rows[row])
        items.append(columns[column])
        tastes_of_views.append(taste[row, column])
    session = np.concatenate(sessions)
    order = np.argsort(session, kind="stable")
    session, item = session[order], pool[np.concatenate(items)[order]]
    affinity = np.concatenate(tastes_of_views)[order] + traits.appeal[item]
    gaps = rng.exponential(40.0, len(session)) * _US_PER_SECOND
    view_ts = session_ts[session] + _cumsum_within(gaps, session).astype(np.int64)
    return _escalate(session_user[session], item, view_ts, affinity, rng)


def _feed(
    columns: np.ndarray,
    item_prior: np.ndarray,
    config: SyntheticSourceConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """The pool columns of one category a slot's feed surfaces: all of them up to
    `feed_depth`, else `feed_depth` drawn without replacement with probability following
    the listings' prior (fresh, popular, appealing first: Gumbel top-k), in pool order."""
    if len(columns) <= config.feed_depth:
        return columns
    keys = item_prior[columns] + rng.gumbel(size=len(columns)).astype(np.float32)
    return np.sort(columns[np.argpartition(-keys, config.feed_depth - 1)[: config.feed_depth]])


def _sample_without_repeats(
    logits: np.ndarray, n_draws: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw n_draws[r] columns of each row r with probability softmax(logits[r]), by
    inverse CDF for all rows at once; a column drawn twice in a row is kept once."""
    n_rows, n_columns = logits.shape
    weights = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    cdf += np.arange(n_rows)[:, None]
    row = np.repeat(np.arange(n_rows), n_draws)
    column = np.searchsorted(cdf.ravel(), row + rng.random(len(row))) - row * n_columns
    column = np.clip(column, 0, n_columns - 1)
    _, first = np.unique(row * n_columns + column, return_index=True)
    first.sort()
    return row[first], column[first]


def _escalate(
    user: np.ndarray,
    item: np.ndarray,
    view_ts: np.ndarray,
    affinity: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Each view may lead to like, save, add_to_bag and purchase, likelier with affinity;
    deeper events come seconds to minutes after the view."""
    n_views = len(user)
    centred = affinity - _AFFINITY_CENTRE

    def happens(kind: str) -> np.ndarray:
        intercept, slope = _ESCALATION[kind]
        return rng.random(n_views) < 1.0 / (1.0 + np.exp(-(intercept + slope * centred)))

    seconds = _US_PER_SECOND
    like, save, bag, buy = happens("like"), happens("save"), happens("bag"), happens("buy")
    bag = np.where(buy, rng.random(n_views) < _BUY_VIA_BAG, bag)
    like_ts = view_ts + rng.integers(3, 40, n_views) * seconds
    save_ts = view_ts + rng.integers(5, 90, n_views) * seconds
    bag_ts = view_ts + rng.integers(20, 240, n_views) * seconds
    buy_ts = np.where(bag, bag_ts, view_ts) + rng.integers(60, 1_800, n_views) * seconds
    parts = [
        (np.ones(n_views, dtype=bool), view_ts, "view"),
        (like, like_ts, "like"),
        (save, save_ts, "save"),
        (bag, bag_ts, "add_to_bag"),
        (buy, buy_ts, "purchase"),
    ]
    return {
        "user": np.concatenate([user[mask] for mask, _, _ in parts]).astype(np.int32),
        "item": np.concatenate([item[mask] for mask, _, _ in parts]).astype(np.int32),
        "ts": np.concatenate([ts[mask] for mask, ts, _ in parts]).astype(np.int64),
        "event": np.concatenate(
            [np.full(int(mask.sum()), _EVENT_CODES[name], dtype=np.int8) for mask, _, name in parts]
        ),
    }


def _end_listings_at_first_purchase(
    events: dict[str, np.ndarray], n_items: int, end_us: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Keep events before the end; the first purchase of a listing sells it and nothing
    on it comes later. Returns the events sorted by time and sold_at per item (-1: unsold)."""
    keep = events["ts"] < end_us
    events = {key: values[keep] for key, values in events.items()}
    order = np.lexsort((events["event"], events["item"], events["user"], events["ts"]))
    events = {key: values[order] for key, values in events.items()}
    purchase = events["event"] == _EVENT_CODES["purchase"]
    sold_us = np.full(n_items, -1, dtype=np.int64)
    purchase_rows = np.flatnonzero(purchase)
    items, first = np.unique(events["item"][purchase_rows], return_index=True)
    winners = purchase_rows[first]
    sold_us[items] = events["ts"][winners]
    limit = np.where(sold_us >= 0, sold_us, np.iinfo(np.int64).max)[events["item"]]
    keep = events["ts"] <= limit
    keep &= ~purchase
    keep[winners] = True
    return {key: values[keep] for key, values in events.items()}, sold_us


# --- Small helpers -------------------------------------------------------------------


def _time_of_day(count: int, rng: np.random.Generator) -> np.ndarray:
    """Microseconds after midnight, following the hourly activity profile."""
    hour = rng.choice(24, count, p=_HOURLY_ACTIVITY / _HOURLY_ACTIVITY.sum())
    return ((hour + rng.random(count)) * 3_600 * _US_PER_SECOND).astype(np.int64)


def _cumsum_within(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running sum of values inside each run of equal, sorted group labels."""
    total = np.cumsum(values)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    offsets = np.repeat(total[starts] - values[starts], np.diff(np.r_[starts, len(group)]))
    return total - offsets


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


def _normalised(shares: tuple[float, ...] | list[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(shares, dtype=float)
    return values / values.sum()


def _utc(value: pd.Timestamp | str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _to_us(stamp: pd.Timestamp) -> int:
    """Microseconds since the epoch."""
    return (stamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)


def _timestamps(us: np.ndarray) -> pd.Series:
    """UTC microsecond timestamps from int64 microseconds since the epoch."""
    return pd.Series(np.asarray(us, dtype=np.int64).astype("datetime64[us]")).dt.tz_localize("UTC")
