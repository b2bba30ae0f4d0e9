"""A tiny popularity bundle with known answers: ten listings in two categories, one sold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.config import PopularityConfig
from components.retrieval.popularity import RecentPopularity
from components.serving.bundle import build_bundle

#: Interactions per listing: the popularity order is i0 > i5 > i1 > i6 > i2 > i7 > i3 > i8 > i4.
COUNTS = {"i0": 10, "i5": 8, "i1": 7, "i6": 6, "i2": 5, "i7": 4, "i3": 3, "i8": 2, "i4": 1}
SOLD = "i0"
#: u1 bought i5: never recommend it to u1 again.
BUYER, BOUGHT = "u1", "i5"


def tiny_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = [f"i{n}" for n in range(10)]
    items = pd.DataFrame(
        {
            "item_id": ids,
            "title": [f"listing {n}" for n in range(10)],
            "category": ["dresses"] * 5 + ["shoes"] * 5,
            "price": [10.0 + n for n in range(10)],
            "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
            "sold_at": [pd.Timestamp("2026-01-05", tz="UTC") if i == SOLD else pd.NaT for i in ids],
        }
    )
    rows = [(f"v{n}", item, "view") for item, count in COUNTS.items() for n in range(count)] + [
        (BUYER, BOUGHT, "purchase")
    ]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "event"])
    interactions["ts"] = pd.Timestamp("2026-01-04", tz="UTC")
    interactions["weight"] = 1.0
    return items, interactions


def write_tiny_bundle(folder: Path, *, unknown_attributes: bool = False) -> Path:
    """`unknown_attributes`: the most popular listing on sale (i5) has no title, category
    or price (the canonical schema allows null attributes)."""
    items, interactions = tiny_tables()
    if unknown_attributes:
        items["price"] = items["price"].astype("Float64")
        items.loc[items["item_id"] == "i5", ["title", "category", "price"]] = None
    as_of = pd.Timestamp("2026-01-06", tz="UTC")
    model = RecentPopularity.fit(
        interactions, PopularityConfig(half_life=None, event_weights={"purchase": 0.0}), as_of
    )
    build_bundle(
        folder,
        model=model,
        items=items,
        available=items["sold_at"].isna(),
        user_exclusions=interactions[interactions["event"] == "purchase"],
        metadata={"dataset": "tiny", "data_until": as_of.isoformat()},
    )
    return folder


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return write_tiny_bundle(tmp_path / "bundle")


def register_tiny_champion(home: Path, folder: Path) -> str:
    """Register the tiny bundle as `models:/rewear@champion` in `home`'s registry; returns
    the tracking URI."""
    from components.registry.registration import CHAMPION, log_and_register
    from components.registry.tracking import configure_mlflow
    from components.settings import RewearSettings

    settings = RewearSettings(home=home)
    client, experiment_id = configure_mlflow(settings, "rewear")
    registered = log_and_register(
        client,
        client.create_run(experiment_id).info.run_id,
        write_tiny_bundle(folder),
        "rewear",
        {"snapshot_id": "s", "git_commit": "c", "config_hash": "h", "dataset": "tiny"},
        example_user_id="u1",
    )
    client.set_registered_model_alias("rewear", CHAMPION, str(registered.version))
    return settings.tracking_uri
