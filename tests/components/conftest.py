"""Fixtures the component tests of several packages share: the two-tower's toy marketplace
(retrieval, evaluation and serving tests) and a small synthetic marketplace's split
(evaluation and registry tests).

The toy marketplace: shoe people interact only with shoes, bag people only with bags; the
two kinds differ in every attribute (category, brand, title words). A model that learns
anything puts a user's own kind first, even for listings it has never seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from components.config import SplitConfig, SyntheticSourceConfig, TwoTowerConfig
from components.data.schema import CanonicalTables, canonicalise
from components.data.split import DataSplit, split_tables

if TYPE_CHECKING:
    from components.retrieval.two_tower import TrainedTwoTower

TOY_START = pd.Timestamp("2026-01-01T00:00:00Z")
TOY_KINDS = {
    "shoe": {"category": "shoes", "brand": "Nike", "title": "Nike running sneakers"},
    "bag": {"category": "bags", "brand": "Gucci", "title": "Gucci leather shoulder bag"},
}
#: A two-tower small enough to train on the toy marketplace in about a second.
TOY_TWO_TOWER = TwoTowerConfig(
    embedding_dim=16,
    feature_dim=8,
    hidden_dim=32,
    text_buckets=512,
    history_length=10,
    batch_size=32,
    learning_rate=1e-2,
    max_epochs=6,
    patience=6,
    early_stopping_k=5,
    item_id_dropout=0.5,
    extra_negatives=16,
    batch_window="3D",
    max_training_seconds=60,
)


def _listing(item_id: str, kind: str, number: int, created: pd.Timestamp) -> dict[str, object]:
    attributes = TOY_KINDS[kind]
    return {
        "item_id": item_id,
        "seller_id": f"s{number % 3}",
        "category": attributes["category"],
        "brand": attributes["brand"],
        "size": "M",
        "condition": "good",
        "colour": "black" if number % 2 else "white",
        "price": 20.0 + number,
        "title": f"{attributes['title']} {'black' if number % 2 else 'white'}",
        "created_at": created,
        "sold_at": pd.NaT,
    }


def _toy_tables() -> CanonicalTables:
    rng = np.random.default_rng(0)
    items = [
        _listing(f"{kind}{n:02d}", kind, n, TOY_START + pd.Timedelta(hours=12 * n))
        for kind in TOY_KINDS
        for n in range(20)
    ]
    # Two listings posted during the test window: never seen in training.
    items += [
        _listing("shoe_new", "shoe", 99, TOY_START + pd.Timedelta(days=26)),
        _listing("bag_new", "bag", 98, TOY_START + pd.Timedelta(days=26)),
    ]
    events = []
    for user in range(30):
        kind = "shoe" if user % 2 == 0 else "bag"
        for n in rng.choice(20, size=9, replace=False):
            created = TOY_START + pd.Timedelta(hours=12 * int(n))
            ts = created + pd.Timedelta(hours=float(rng.uniform(1, 24 * 27 - 12 * int(n))))
            event = str(rng.choice(["view", "view", "like", "purchase"]))
            events.append((f"u{user:02d}", f"{kind}{n:02d}", ts, event))
        new_ts = TOY_START + pd.Timedelta(days=26, hours=float(rng.uniform(1, 20)))
        events.append((f"u{user:02d}", f"{kind}_new", new_ts, "view"))
    frame = pd.DataFrame(events, columns=["user_id", "item_id", "ts", "event"])
    frame["weight"] = 1.0
    users = pd.DataFrame({"user_id": sorted(frame["user_id"].unique())})
    return canonicalise(CanonicalTables(interactions=frame, items=pd.DataFrame(items), users=users))


@pytest.fixture(scope="session")
def toy_tables() -> CanonicalTables:
    """The toy marketplace: 30 users, 40 listings and two listed in the test window."""
    return _toy_tables()


@pytest.fixture(scope="session")
def toy_split(toy_tables: CanonicalTables) -> DataSplit:
    """The toy marketplace split by time: 4-day valid and test windows."""
    return split_tables(toy_tables, SplitConfig(valid_duration="4D", test_duration="4D"))


@pytest.fixture(scope="session")
def toy_two_tower(toy_split: DataSplit) -> TrainedTwoTower:
    """TOY_TWO_TOWER trained for the test stage of the toy split, early-stopped on its valid
    window (seeded: the same model every run)."""
    from components.evaluation.encoder_validation import encoder_validation
    from components.retrieval.two_tower_training import train_two_tower

    validation = encoder_validation(toy_split, TOY_TWO_TOWER)
    return train_two_tower(toy_split, TOY_TWO_TOWER, "test", validation=validation)


@pytest.fixture(scope="session")
def synthetic_split() -> DataSplit:
    """The synthetic marketplace with 400 users over 21 days, split by the default protocol."""
    from components.data.synthetic import generate_marketplace

    tables = generate_marketplace(SyntheticSourceConfig(n_users=400, n_days=21)).tables
    return split_tables(tables, SplitConfig())
