"""The sessions of the synthetic marketplace: day by day and slot by slot, users open
sessions that sample available listings (by taste, social proof and freshness), views
escalate, and the first purchase of a listing ends it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import SyntheticSourceConfig
from components.data.synthetic.clock import _US_PER_DAY, _US_PER_SECOND, _time_of_day, _to_us
from components.data.synthetic.escalation import _EVENT_CODES, _escalate
from components.data.synthetic.listings import ItemTraits
from components.data.synthetic.users import (
    _DAYS_PER_TASTE_STEP,
    UserTastes,
    _user_item_affinity,
)
from components.data.synthetic.vocabulary import CATEGORIES

_SLOT_HOURS = 2
#: Monday..Sunday multipliers: more browsing at weekends.
_WEEKDAY_SESSIONS = np.array([0.92, 0.92, 0.95, 0.98, 1.03, 1.1, 1.1])
#: Pull of a browse session's sampling towards the user's taste.
_BROWSE_TASTE = 0.3
#: Exponent of the social-proof boost (1 + likes + saves + bags so far).
_POPULARITY_EXPONENT = 0.4
_FRESHNESS_FLOOR = 0.03


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


def _cumsum_within(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running sum of values inside each run of equal, sorted group labels."""
    total = np.cumsum(values)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    offsets = np.repeat(total[starts] - values[starts], np.diff(np.r_[starts, len(group)]))
    return total - offsets
