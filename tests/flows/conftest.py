"""What the flow tests share: small synthetic marketplaces, as `--set` overrides of the
synthetic config or written as an `interactions_file` source cut at a moment (what the
marketplace's export looked like then: listings sold later still on sale), and an MLflow
client on the test's REWEAR_HOME."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from components.config import SyntheticSourceConfig
from components.data.schema import CanonicalTables
from components.data.synthetic import generate_marketplace

if TYPE_CHECKING:
    from mlflow import MlflowClient

#: Small enough for a flow run in seconds, big enough for every stage to have signal.
SMALL_MARKET = {
    "n_users": 300,
    "n_sellers": 200,
    "n_days": 21,
    "listings_per_day": 60,
    "initial_listings": 300,
}
#: The two-tower alone, without the ranker: its answers come through the index a refresh
#: rebuilds (the default two-stage bundle has its own refresh test).
TWO_TOWER_OVERRIDES = {
    "model.candidates.sources": ["two_tower"],
    "model.ranker.enabled": False,
    "model.two_tower.max_epochs": 2,
    "model.two_tower.embedding_dim": 16,
    "model.two_tower.hidden_dim": 32,
    "model.two_tower.extra_negatives": 64,
    "model.annoy.n_trees": 10,
    "model.annoy.recall_sample": 50,
    "evaluation.bootstrap_resamples": 50,
}
#: The synthetic config's marketplace with 300 users over 21 days (its other sizes scale).
SMALL_SYNTHETIC = {"source.n_users": 300, "source.n_days": 21}
#: Fewer bootstrap resamples: the flow tests check behaviour, not interval widths.
FAST = {"evaluation.bootstrap_resamples": 50}


def source_overrides(market: Mapping[str, object]) -> dict[str, object]:
    """`market`'s sizes (e.g. SMALL_MARKET) as overrides of a config's `source`."""
    return {f"source.{name}": value for name, value in market.items()}


def set_arguments(overrides: Mapping[str, object]) -> list[str]:
    """`overrides` as the command line's `--set key=value` arguments, in order."""
    return [part for key, value in overrides.items() for part in ("--set", f"{key}={value}")]


def small_market(**changes: object) -> CanonicalTables:
    return generate_marketplace(SyntheticSourceConfig(**{**SMALL_MARKET, **changes})).tables


def write_market(tables: CanonicalTables, folder: Path, until: pd.Timestamp | None = None) -> Path:
    """Write the tables as parquet files as they were known at `until` (None: all), and a
    pipeline config reading them; returns the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    interactions, items, users = tables.interactions, tables.items.copy(), tables.users
    if until is not None:
        interactions = interactions[interactions["ts"] < until]
        items = items[items["created_at"].isna() | (items["created_at"] < until)].copy()
        items.loc[items["sold_at"] >= until, "sold_at"] = pd.NaT
    for name, frame in (("interactions", interactions), ("items", items), ("users", users)):
        staging = folder / f".{name}.parquet.tmp"
        frame.to_parquet(staging, index=False)
        staging.replace(folder / f"{name}.parquet")
    config = folder / "market.yaml"
    config.write_text(
        "name: market\n"
        "source:\n"
        "  kind: interactions_file\n"
        "  interactions: interactions.parquet\n"
        "  items: items.parquet\n"
        "  users: users.parquet\n"
        "  columns: {event: event, weight: weight}\n"
        "split: {protocol: temporal, valid_duration: 5D, test_duration: 5D}\n"
    )
    return config


def last_moment(tables: CanonicalTables) -> pd.Timestamp:
    return tables.interactions["ts"].max()


@pytest.fixture
def registry_client(rewear_home: Path) -> MlflowClient:
    """A client on the tracking store and registry of the test's REWEAR_HOME."""
    from mlflow import MlflowClient

    from components.settings import RewearSettings

    uri = RewearSettings().tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
