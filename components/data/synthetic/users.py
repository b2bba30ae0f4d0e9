"""The users of the synthetic marketplace: when they join and from where, their latent
tastes (the ground truth, drifting week by week) and the affinity those tastes give each
listing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import SyntheticSourceConfig
from components.data.synthetic.clock import _US_PER_DAY, _utc
from components.data.synthetic.listings import ItemTraits
from components.data.synthetic.vocabulary import (
    _COUNTRY_SHARES,
    _SIZE_SHARES,
    BRAND_NAMES,
    BRANDS,
    CATEGORIES,
    COLOURS,
    COUNTRIES,
    SIZE_SYSTEMS,
    STYLE_NAMES,
    TIER_LOG_PRICE,
    _normalised,
)

#: Category tastes take one random-walk step per this many days.
_DAYS_PER_TASTE_STEP = 7
#: Floor on the lowest category log-preference (a user never fully ignores a category).
_CATEGORY_LOG_FLOOR = -5.0
_STYLE_WEIGHT = 0.8
_COLOUR_WEIGHT = 0.4
_BRAND_WEIGHT = 1.2
_PRICE_FIT_FLOOR = -6.0
#: Size fit: own size, one step away, further (one-size items always fit).
_SIZE_FIT = (0.0, -1.0, -3.0)


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
