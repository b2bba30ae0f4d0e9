"""How a view escalates to deeper events (like, save, add_to_bag, purchase): likelier the
more the user likes the listing, seconds to minutes after the view. The generator and the
market simulation share it."""

from __future__ import annotations

import numpy as np

from components.data.schema import MARKETPLACE_EVENTS
from components.data.synthetic.clock import _US_PER_SECOND

#: Escalation logits: intercept + slope * (affinity - _AFFINITY_CENTRE).
_AFFINITY_CENTRE = -1.5
_ESCALATION = {"like": (-2.3, 0.6), "save": (-3.3, 0.6), "bag": (-3.4, 0.7), "buy": (-3.4, 0.8)}
#: Share of purchases that go through the bag first (the others are "buy now").
_BUY_VIA_BAG = 0.6
_EVENT_CODES = {event: code for code, event in enumerate(MARKETPLACE_EVENTS)}


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
