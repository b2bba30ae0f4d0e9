"""The synthetic marketplace: canonical tables, marketplace rules, and learnable signal."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from components.config import SyntheticSourceConfig
from components.data.schema import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    MARKETPLACE_EVENTS,
    TIMESTAMP_DTYPE,
    USER_COLUMNS,
)
from components.data.synthetic import (
    BRANDS,
    CATEGORIES,
    NO_BRAND,
    SIZE_SYSTEMS,
    SyntheticMarketplace,
    generate_marketplace,
    resolve_supply,
    taste_scores,
)
from components.evaluation.metrics import mean_over_users, ndcg_at_k, recall_at_k, top_k_from_scores

TINY = SyntheticSourceConfig(
    n_users=300, n_sellers=200, n_days=10, listings_per_day=60, initial_listings=200
)
SMALL = SyntheticSourceConfig(
    n_users=1_500, n_sellers=1_000, n_days=28, listings_per_day=200, initial_listings=1_000
)


def _start(config: SyntheticSourceConfig) -> pd.Timestamp:
    return pd.Timestamp(config.start, tz="UTC")


def _end(config: SyntheticSourceConfig) -> pd.Timestamp:
    return _start(config) + pd.Timedelta(days=config.n_days)


@pytest.fixture(scope="module")
def small() -> SyntheticMarketplace:
    return generate_marketplace(SMALL)


def test_same_seed_gives_identical_tables_and_another_seed_differs() -> None:
    first, second = generate_marketplace(TINY), generate_marketplace(TINY)
    for name in ("interactions", "items", "users"):
        pd.testing.assert_frame_equal(first.tables.table(name), second.tables.table(name))
    other = generate_marketplace(TINY.model_copy(update={"seed": TINY.seed + 1}))
    assert not first.tables.items.equals(other.tables.items)
    assert not first.tables.interactions.equals(other.tables.interactions)


def test_a_minimal_config_still_gives_valid_tables() -> None:
    config = SyntheticSourceConfig(
        n_users=10, n_sellers=2, n_days=7, listings_per_day=5, initial_listings=0
    )
    tables = generate_marketplace(config).tables
    assert len(tables.users) == 10
    assert tables.items["seller_id"].nunique() == 2
    assert tables.interactions["item_id"].isin(tables.items["item_id"]).all()


def test_unset_supply_scales_with_the_users_and_set_supply_is_kept() -> None:
    default = resolve_supply(SyntheticSourceConfig())
    assert (default.n_sellers, default.listings_per_day, default.initial_listings) == (
        3_000,
        450,
        3_000,
    )
    half = resolve_supply(SyntheticSourceConfig(n_users=2_000, listings_per_day=100))
    assert (half.n_sellers, half.listings_per_day, half.initial_listings) == (1_500, 100, 1_500)


def test_tables_have_the_canonical_columns_and_dtypes(small: SyntheticMarketplace) -> None:
    tables = small.tables
    assert tuple(tables.interactions.columns) == INTERACTION_COLUMNS
    assert tuple(tables.items.columns) == ITEM_COLUMNS
    assert tuple(tables.users.columns[: len(USER_COLUMNS)]) == USER_COLUMNS
    for frame, columns in (
        (tables.interactions, ("user_id", "item_id", "event")),
        (tables.items, ("item_id", "seller_id", "category", "brand", "size", "title")),
        (tables.users, ("user_id", "country")),
    ):
        for column in columns:
            assert pd.api.types.is_string_dtype(frame[column]), column
            assert frame[column].notna().all(), column
    assert str(tables.interactions["ts"].dtype) == TIMESTAMP_DTYPE
    assert str(tables.items["created_at"].dtype) == TIMESTAMP_DTYPE
    assert str(tables.items["sold_at"].dtype) == TIMESTAMP_DTYPE
    assert str(tables.users["created_at"].dtype) == TIMESTAMP_DTYPE
    assert tables.items["price"].dtype == np.float64
    assert tables.interactions["weight"].dtype == np.float64
    assert (tables.interactions["weight"] == 1.0).all()
    assert tables.source["kind"] == "synthetic"


def test_ids_are_unique_and_every_interaction_refers_to_a_known_user_and_item(
    small: SyntheticMarketplace,
) -> None:
    tables = small.tables
    assert tables.items["item_id"].is_unique
    assert tables.users["user_id"].is_unique
    assert tables.interactions["user_id"].isin(tables.users["user_id"]).all()
    assert tables.interactions["item_id"].isin(tables.items["item_id"]).all()
    assert set(tables.interactions["event"].unique()) == set(MARKETPLACE_EVENTS)


def test_events_happen_inside_the_period_after_the_user_joined_and_the_item_was_listed(
    small: SyntheticMarketplace,
) -> None:
    events = small.tables.interactions
    assert events["ts"].is_monotonic_increasing
    assert events["ts"].min() >= _start(SMALL)
    assert events["ts"].max() < _end(SMALL)
    joined = events["user_id"].map(small.tables.users.set_index("user_id")["created_at"])
    listed = events["item_id"].map(small.tables.items.set_index("item_id")["created_at"])
    assert (events["ts"] >= joined).all()
    assert (events["ts"] > listed).all()


def test_a_purchase_ends_the_listing(small: SyntheticMarketplace) -> None:
    events, items = small.tables.interactions, small.tables.items.set_index("item_id")
    purchases = events[events["event"] == "purchase"]
    assert purchases["item_id"].is_unique
    sold = items[items["sold_at"].notna()]
    assert set(sold.index) == set(purchases["item_id"])
    purchase_ts = purchases.set_index("item_id")["ts"]
    assert (sold["sold_at"] == purchase_ts.reindex(sold.index)).all()
    sold_at = events["item_id"].map(items["sold_at"])
    assert not (sold_at.notna() & (events["ts"] > sold_at)).any()


def test_every_deeper_event_follows_a_view_of_the_same_listing(
    small: SyntheticMarketplace,
) -> None:
    events = small.tables.interactions
    first_view = (
        events[events["event"] == "view"].groupby(["user_id", "item_id"])["ts"].min().rename("v")
    )
    deeper = events[events["event"] != "view"].join(first_view, on=["user_id", "item_id"])
    assert deeper["v"].notna().all()
    assert (deeper["v"] < deeper["ts"]).all()


def test_most_sold_listings_sell_within_days_and_some_never_sell(
    small: SyntheticMarketplace,
) -> None:
    items = small.tables.items
    sold = items["sold_at"].notna()
    days_to_sell = (items["sold_at"] - items["created_at"])[sold].dt.total_seconds() / 86_400
    print(f"sold {sold.mean():.0%}; median days to sell {days_to_sell.median():.2f}")
    assert 0.2 < sold.mean() < 0.8
    assert days_to_sell.median() < 5.0
    assert (days_to_sell < 7.0).mean() > 0.6


def test_sellers_have_a_long_tail(small: SyntheticMarketplace) -> None:
    listings = small.tables.items["seller_id"].value_counts()
    top_share = listings.iloc[: len(listings) // 10].sum() / listings.sum()
    print(f"top 10% of sellers hold {top_share:.0%}; median {listings.median()} listings")
    assert top_share > 0.4
    assert listings.median() <= 3
    assert listings.max() > 20 * listings.median()


def test_listing_attributes_are_consistent(small: SyntheticMarketplace) -> None:
    items = small.tables.items
    subcategories = {sub: spec.name for spec in CATEGORIES for sub, _, _ in spec.subcategories}
    assert (items["subcategory"].map(subcategories) == items["category"]).all()
    size_of = items.groupby("category")["size"].unique()
    assert set(size_of["shoes"]) <= set(SIZE_SYSTEMS["eu_shoe"])
    assert set(size_of["tops"]) == set(SIZE_SYSTEMS["alpha"])
    assert set(size_of["bags"]) == set(size_of["accessories"]) == {"one size"}
    makes = {brand: set(categories) for brand, _, categories in BRANDS}
    branded = items[items["brand"] != NO_BRAND]
    assert all(row.category in makes[row.brand] for row in branded.itertuples())
    brand_counts = branded["brand"].value_counts()
    assert brand_counts.iloc[:5].sum() > 0.3 * len(branded)
    tier = {brand: tier for brand, tier, _ in BRANDS}
    bags = branded[branded["category"] == "bags"]
    by_tier = bags.groupby(bags["brand"].map(tier))["price"].median()
    assert by_tier["luxury"] > 3 * by_tier["budget"]
    assert (items["price"] > 0).all()
    assert all(
        sub in title.lower()
        for sub, title in zip(items["subcategory"], items["title"], strict=True)
    )


def test_users_join_over_time(small: SyntheticMarketplace) -> None:
    joined = small.tables.users["created_at"]
    assert (joined < _start(SMALL)).mean() == pytest.approx(SMALL.initial_user_share, abs=0.01)
    assert (joined >= _start(SMALL) + pd.Timedelta(days=SMALL.n_days // 2)).sum() > 0


def test_category_tastes_drift_slowly(small: SyntheticMarketplace) -> None:
    weekly = small.tastes.category_log_pref
    first, last = weekly[0].ravel(), weekly[-1].ravel()
    next_week = weekly[1].ravel()
    assert not np.array_equal(first, next_week)
    assert np.corrcoef(first, next_week)[0, 1] > 0.9
    assert np.corrcoef(first, last)[0, 1] < np.corrcoef(first, next_week)[0, 1]


def test_taste_scores_shape_and_unknown_ids(small: SyntheticMarketplace) -> None:
    users = small.tables.users["user_id"].iloc[:3]
    items = small.tables.items["item_id"].iloc[:5]
    scores = taste_scores(small, users, items, _start(SMALL))
    assert scores.shape == (3, 5)
    assert scores.dtype == np.float64
    assert np.isfinite(scores).all()
    with pytest.raises(KeyError, match="unknown item ids"):
        taste_scores(small, users, ["not-an-item"], _start(SMALL))


def test_the_true_tastes_predict_next_week_far_better_than_popularity(
    small: SyntheticMarketplace,
) -> None:
    """The marketplace has learnable signal: ranking the listings available at T by the
    true tastes recalls the next week's interactions much better than recent popularity."""
    events, items = small.tables.interactions, small.tables.items
    cutoff = _end(SMALL) - pd.Timedelta(days=7)
    column = pd.Series(np.arange(len(items)), index=items["item_id"].to_numpy())
    available = (
        (items["created_at"] <= cutoff) & (items["sold_at"].isna() | (items["sold_at"] > cutoff))
    ).to_numpy()

    test = events[events["ts"] >= cutoff][["user_id", "item_id"]].drop_duplicates()
    users = np.sort(test["user_id"].unique())
    row = pd.Series(np.arange(len(users)), index=users)
    relevant = sp.csr_matrix(
        (
            np.ones(len(test)),
            (row[test["user_id"]].to_numpy(), column[test["item_id"]].to_numpy()),
        ),
        shape=(len(users), len(items)),
    )

    age_days = (cutoff - items["created_at"]).dt.total_seconds().to_numpy() / 86_400
    freshness = np.log(np.exp(-age_days / SMALL.freshness_days) + 0.03)
    oracle = taste_scores(small, users, items["item_id"], cutoff) + freshness[None, :]
    history = events[(events["ts"] < cutoff) & (events["ts"] >= cutoff - pd.Timedelta(days=14))]
    counts = np.bincount(column[history["item_id"]].to_numpy(), minlength=len(items))
    popularity = np.broadcast_to(counts.astype(float), oracle.shape)

    def score(scores: np.ndarray) -> dict[str, float]:
        ranked = top_k_from_scores(np.where(available[None, :], scores, -np.inf), 100)
        return {
            "recall@100": mean_over_users(recall_at_k(ranked, relevant, 100), relevant),
            "ndcg@100": mean_over_users(ndcg_at_k(ranked, relevant, 100), relevant),
        }

    oracle_metrics, popularity_metrics = score(oracle), score(popularity)
    print(f"users {len(users)}, recommendable {available.sum()} of {len(items)} listings")
    print(f"oracle {oracle_metrics}\npopularity {popularity_metrics}")
    assert oracle_metrics["recall@100"] >= 2 * popularity_metrics["recall@100"]
    assert oracle_metrics["ndcg@100"] >= 2 * popularity_metrics["ndcg@100"]
    assert oracle_metrics["recall@100"] > 0.1


def test_default_config_is_demo_sized_and_fast() -> None:
    began = time.perf_counter()
    tables = generate_marketplace(SyntheticSourceConfig()).tables
    seconds = time.perf_counter() - began
    print(
        f"default: {len(tables.users)} users, {len(tables.items)} listings, "
        f"{len(tables.interactions)} events in {seconds:.1f} s"
    )
    assert 1_000 <= len(tables.users) < 10_000
    assert 10_000 <= len(tables.items) < 100_000
    assert 300_000 <= len(tables.interactions) <= 600_000
    assert seconds < 60
