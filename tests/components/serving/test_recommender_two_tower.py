"""The two-tower bundle's request side: sessions pooled by the user tower, blended with a
known user's history, and the popularity fallback (toy shoes-vs-bags marketplace)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import AnnoyConfig, PopularityConfig
from components.retrieval.ann_index import build_annoy_index
from components.retrieval.popularity import RecentPopularity
from components.serving.bundle import TWO_TOWER_SOURCE, build_bundle
from components.serving.recommender import FALLBACK_SOURCE, BundleRecommender

SHOE_SESSION = ["shoe00", "shoe01", "shoe02"]
BAG_SESSION = ["bag00", "bag01", "bag02"]


@pytest.fixture(scope="module")
def recommender(toy_tables, toy_two_tower, tmp_path_factory) -> BundleRecommender:
    tables, trained = toy_tables, toy_two_tower
    folder = tmp_path_factory.mktemp("two-tower")
    trained.save(folder / "encoder")
    items, history = tables.items, tables.interactions
    until = history["ts"].max()
    available = items["sold_at"].isna()
    listings = items[available.to_numpy()]
    build_annoy_index(
        trained.embed_items(listings, until),
        listings["item_id"].astype(str).tolist(),
        AnnoyConfig(n_trees=10),
        folder / "index",
    )
    build_bundle(
        folder / "bundle",
        model=RecentPopularity.fit(history, PopularityConfig()),
        items=items,
        available=available,
        user_exclusions=history[history["event"] == "purchase"],
        metadata={"data_until": until.isoformat()},
        encoder_dir=folder / "encoder",
        index_dir=folder / "index",
        history=history,
    )
    return BundleRecommender.load(folder / "bundle")


def _shoe_share(answer: pd.DataFrame) -> float:
    return float(answer["category"].eq("shoes").mean())


def test_an_anonymous_session_is_pooled_by_the_user_tower(recommender):
    shoes = recommender.recommend(None, k=10, recent_item_ids=[SHOE_SESSION])
    bags = recommender.recommend(None, k=10, recent_item_ids=[BAG_SESSION])
    assert set(shoes["source"]) == {TWO_TOWER_SOURCE} == set(bags["source"])
    assert _shoe_share(shoes) >= 0.8 and _shoe_share(bags) <= 0.2
    # The session's own listings are not recommended back.
    assert not set(SHOE_SESSION) & set(shoes["item_id"])
    assert shoes["user_id"].isna().all()


def test_a_known_users_session_moves_their_answer_towards_it(recommender):
    bag_user = "u01"  # odd users only ever interacted with bags
    alone = recommender.recommend([bag_user], k=20)
    with_shoes = recommender.recommend([bag_user], k=20, recent_item_ids=[SHOE_SESSION])
    assert _shoe_share(alone) <= 0.2
    assert _shoe_share(with_shoes) > _shoe_share(alone) + 0.2
    assert set(with_shoes["source"]) == {TWO_TOWER_SOURCE}


def test_a_session_of_unknown_listings_falls_back_to_popular_ones(recommender):
    answer = recommender.recommend(None, k=5, recent_item_ids=[["listed-after-the-bundle"]])
    assert set(answer["source"]) == {FALLBACK_SOURCE}
    assert len(answer) == 5


def test_precomputed_user_vectors_equal_encoding_at_request_time(recommender):
    retrieval = recommender.retrieval
    users = ["u00", "u01", "u17"]
    expected = retrieval.encoder.encode(users)
    looked_up = recommender._user_vectors([*users, "never-seen"])
    assert sorted(looked_up) == [0, 1, 2]
    for row in range(3):
        np.testing.assert_allclose(looked_up[row], expected[row], rtol=1e-6, atol=1e-6)
