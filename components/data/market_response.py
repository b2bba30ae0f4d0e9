"""How the simulated users respond to a served list: which slots the position model has
them examine, which examined listings they click (a view), and how views escalate as in the
generator; and the ground truth of a list, its expected purchases."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from components.config import MarketSimulationConfig
from components.data.synthetic.clock import _US_PER_SECOND
from components.data.synthetic.escalation import (
    _AFFINITY_CENTRE,
    _ESCALATION,
    _EVENT_CODES,
    _escalate,
)
from components.data.synthetic.listings import ItemTraits
from components.data.synthetic.users import UserTastes, _user_item_affinity

_PURCHASE = _EVENT_CODES["purchase"]


def _examination(config: MarketSimulationConfig) -> np.ndarray:
    """Probability that slot r (0-based here) is examined under the position-based model."""
    return (np.arange(1, config.k + 1, dtype=np.float64)) ** -config.examination_decay


def _click_probability(affinity: np.ndarray, config: MarketSimulationConfig) -> np.ndarray:
    logit = config.click_intercept + config.click_slope * (affinity - _AFFINITY_CENTRE)
    return 1.0 / (1.0 + np.exp(-logit))


def _affinities(
    tastes: UserTastes, traits: ItemTraits, week: int, users: np.ndarray, grid: np.ndarray
) -> np.ndarray:
    """True affinity of each session's user for each listing of its list (-inf: empty)."""
    affinity = np.full(grid.shape, -np.inf)
    for row, user in enumerate(users):
        columns = grid[row]
        present = columns >= 0
        if present.any():
            taste = _user_item_affinity(tastes, week, np.array([user]), traits, columns[present])
            affinity[row, present] = taste[0] + traits.appeal[columns[present]]
    return affinity


def _respond(
    tastes: UserTastes,
    traits: ItemTraits,
    config: MarketSimulationConfig,
    week: int,
    users: np.ndarray,
    stamps: np.ndarray,
    grid: np.ndarray,
    shown: np.ndarray,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Sessions go down their lists slot by slot: examined slots are clicked (a view) with
    the click model's probability, and views escalate as in the generator. Returns the
    events, and views and purchases per session."""
    n_sessions, k = grid.shape
    affinity = _affinities(tastes, traits, week, users, grid)
    exam = _examination(config)
    active = np.ones(n_sessions, dtype=bool)
    clock = stamps.astype(np.int64).copy()
    views = np.zeros(n_sessions, dtype=np.int64)
    bought = np.zeros(n_sessions, dtype=np.int64)
    parts = []
    for slot in range(k):
        draws = rng.random((3, n_sessions))
        if config.position_model == "cascade":
            examined = active & shown[:, slot]
        else:
            examined = shown[:, slot] & (draws[0] < exam[slot])
        clock += (rng.exponential(8.0, n_sessions) * _US_PER_SECOND).astype(np.int64)
        clicked = examined & (draws[1] < _click_probability(affinity[:, slot], config))
        rows = np.flatnonzero(clicked)
        if len(rows):
            clock[rows] += (rng.exponential(40.0, len(rows)) * _US_PER_SECOND).astype(np.int64)
            # Escalated by session row, then mapped back to the users.
            part = _escalate(rows, grid[rows, slot], clock[rows], affinity[rows, slot], rng)
            buyers = np.zeros(n_sessions, dtype=bool)
            buyers[part["user"][part["event"] == _PURCHASE]] = True
            part["user"] = users[part["user"]]
            bought += buyers
            views[rows] += 1
            parts.append(part)
            if config.position_model == "cascade":
                active &= ~buyers
        if config.position_model == "cascade":
            active &= draws[2] < config.cascade_continue
    if not parts:
        return _no_events(), views, bought
    events = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    events["user"] = events["user"].astype(np.int64)
    events["item"] = events["item"].astype(np.int64)
    return events, views, bought


def _no_events() -> dict[str, np.ndarray]:
    """The events of sessions that clicked nothing."""
    empty = np.zeros(0, dtype=np.int64)
    return {"user": empty, "item": empty, "ts": empty, "event": empty.astype(np.int8)}


def _expected_list_purchases(
    tastes: UserTastes,
    traits: ItemTraits,
    config: MarketSimulationConfig,
    user_ids: Sequence[str],
    lists: Sequence[Sequence[str]],
    as_of: pd.Timestamp,
) -> np.ndarray:
    """Sum over slots of P(examined) x P(click) x P(purchase | view) (the cascade's
    examination being the chance to reach the slot without a purchase before it)."""
    per_slot = _slot_purchase_probabilities(tastes, traits, config, user_ids, lists, as_of)
    if config.position_model == "cascade":
        survive = np.cumprod(1.0 - per_slot, axis=1) / np.maximum(1.0 - per_slot, 1e-12)
        reach = survive * config.cascade_continue ** np.arange(config.k)[None, :]
        return (reach * per_slot).sum(axis=1)
    return (per_slot * _examination(config)[None, :]).sum(axis=1)


def _slot_purchase_probabilities(
    tastes: UserTastes,
    traits: ItemTraits,
    config: MarketSimulationConfig,
    user_ids: Sequence[str],
    lists: Sequence[Sequence[str]],
    as_of: pd.Timestamp,
) -> np.ndarray:
    """P(click) x P(purchase | view) of each of the first config.k slots of each list."""
    users = pd.Index(tastes.user_ids).get_indexer(list(user_ids))
    if (users < 0).any():
        raise KeyError(f"unknown user ids {list(np.asarray(user_ids)[users < 0][:5])}")
    week = tastes.week_at(as_of)
    item_row = pd.Index(traits.item_ids)
    grid = np.full((len(users), config.k), -1, dtype=np.int64)
    for row, items in enumerate(lists):
        found = item_row.get_indexer(list(items)[: config.k])
        grid[row, : len(found)] = found
    affinity = _affinities(tastes, traits, week, users, grid)
    intercept, slope = _ESCALATION["buy"]
    buy = 1.0 / (1.0 + np.exp(-(intercept + slope * (affinity - _AFFINITY_CENTRE))))
    return np.where(grid >= 0, _click_probability(affinity, config) * buy, 0.0)
