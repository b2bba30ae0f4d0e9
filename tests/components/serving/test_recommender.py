"""Request handling of the served bundle: fallbacks, exclusions, sessions, bad requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.serving.bundle import POPULARITY_SOURCE
from components.serving.recommender import (
    OUTPUT_COLUMNS,
    SESSION_POPULARITY_SOURCE,
    BundleRecommender,
)
from components.serving.request_parsing import MAX_K, MAX_ROWS, RequestError
from tests.conftest import TINY_BOUGHT, TINY_BUYER, TINY_SOLD, write_tiny_bundle


@pytest.fixture
def recommender(tiny_bundle) -> BundleRecommender:
    return BundleRecommender.load(tiny_bundle)


def test_unknown_user_gets_popular_available_items_never_the_sold_one(recommender):
    answer = recommender.recommend(["never-seen"], k=3)
    assert list(answer.columns) == list(OUTPUT_COLUMNS)
    assert answer["item_id"].tolist() == ["i5", "i1", "i6"]
    assert answer["rank"].tolist() == [1, 2, 3]
    assert answer["score"].tolist() == [8.0, 7.0, 6.0]
    assert set(answer["source"]) == {POPULARITY_SOURCE}
    assert answer["title"].tolist() == ["listing 5", "listing 1", "listing 6"]
    # Asking for the whole catalogue returns every available listing once, never the sold one.
    everything = recommender.recommend(["never-seen"], k=MAX_K)
    assert len(everything) == 9 and TINY_SOLD not in set(everything["item_id"])


def test_a_buyer_never_gets_what_they_bought(recommender):
    answer = recommender.recommend([TINY_BUYER], k=3)
    assert answer["item_id"].tolist() == ["i1", "i6", "i2"]
    assert TINY_BOUGHT not in set(recommender.recommend([TINY_BUYER], k=MAX_K)["item_id"])


def test_exclude_item_ids_apply_to_every_row_and_unknown_ids_are_ignored(recommender):
    answer = recommender.recommend(["a", TINY_BUYER], k=2, exclude_item_ids=["i1", "no-such-item"])
    assert answer.groupby("request")["item_id"].agg(list).tolist() == [
        ["i5", "i6"],
        ["i6", "i2"],
    ]
    assert answer["user_id"].tolist() == ["a", "a", TINY_BUYER, TINY_BUYER]


def test_anonymous_session_gets_popular_items_of_its_categories_first(recommender):
    answer = recommender.recommend(None, k=5, recent_item_ids=[["i2", "unknown-listing"]])
    # Dresses first (i0 is sold, i2 is the session's own), then the most popular others.
    assert answer["item_id"].tolist() == ["i1", "i3", "i4", "i5", "i6"]
    assert answer["source"].tolist() == [SESSION_POPULARITY_SOURCE] * 3 + [POPULARITY_SOURCE] * 2
    assert answer["score"].tolist() == [7.0, 3.0, 1.0, 8.0, 6.0]
    assert answer["user_id"].isna().all()


def test_rows_mix_users_and_sessions_and_keep_their_row_number(recommender):
    answer = recommender.recommend(
        ["u-x", None, TINY_BUYER], k=1, recent_item_ids=[None, ["i9"], ["i8"]]
    )
    assert answer["request"].tolist() == [0, 1, 2]
    # Row 1: shoes session (i9); row 2: the buyer's shoes session without the bought i5.
    assert answer["item_id"].tolist() == ["i5", "i5", "i6"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"user_ids": ["u"], "k": 0}, "k must be between 1 and 1000, got 0"),
        ({"user_ids": ["u"], "k": MAX_K + 1}, "k must be between 1 and 1000, got 1001"),
        ({"user_ids": ["u"], "k": "ten"}, "k must be an integer"),
        ({"user_ids": ["u"], "k": True}, "k must be an integer"),
        ({"user_ids": ["u"], "k": 2.5}, "k must be an integer"),
        ({"user_ids": []}, "the request has no rows"),
        ({"user_ids": [None]}, "row 0 has no user_id and no recent_item_ids"),
        ({"user_ids": ["u", np.nan]}, "row 1 has no user_id"),
        ({"user_ids": [12]}, "user_id in row 0 must be a non-empty string, got 12"),
        ({"user_ids": [""]}, "user_id in row 0 must be a non-empty string"),
        ({"user_ids": ["u"], "exclude_item_ids": "i1"}, "exclude_item_ids must be a list"),
        ({"user_ids": ["u"], "exclude_item_ids": [1]}, "non-empty item id strings, got 1"),
        ({"user_ids": None, "recent_item_ids": ["i1"]}, "recent_item_ids (row 0) must be a list"),
        ({"user_ids": ["u"], "recent_item_ids": [[], []]}, "user_id has 1 rows but"),
        ({"user_ids": None, "recent_item_ids": [[]]}, "row 0 has no user_id"),
        ({"user_ids": ["u" * 257]}, "user_id in row 0 has 257 characters; ids have at most 256"),
        ({"user_ids": ["u"], "exclude_item_ids": ["i" * 300]}, "an item id of 300 characters"),
        ({"user_ids": [["x" * 500]]}, "must be a non-empty string, got ['xxxxx"),
        (
            {"user_ids": [f"u{n}" for n in range(MAX_ROWS)], "k": MAX_K},
            "1000 rows x k=1000 = 1,000,000 answers; at most 100,000 per call",
        ),
    ],
)
def test_malformed_requests_name_the_field_and_the_fix(recommender, call, message):
    with pytest.raises(RequestError) as raised:
        recommender.recommend(**call)
    assert message in str(raised.value)
    assert len(str(raised.value)) < 300  # a quoted value is cut short


def test_the_answer_row_cap_counts_rows_times_k(recommender):
    recommender.max_answer_rows = 6
    assert len(recommender.recommend(["a", "b", "c"], k=2)) == 6
    with pytest.raises(RequestError, match=r"3 rows x k=3 = 9 answers; at most 6 per call"):
        recommender.recommend(["a", "b", "c"], k=3)


def test_unknown_listing_attributes_come_back_as_null(tmp_path):
    recommender = BundleRecommender.load(
        write_tiny_bundle(tmp_path / "bundle", unknown_attributes=True)
    )
    answer = recommender.recommend(["never-seen"], k=2)
    assert answer["item_id"].tolist() == ["i5", "i1"]
    assert answer[["title", "category", "price"]].iloc[0].isna().all()
    assert answer[["title", "category", "price"]].iloc[1].tolist() == ["listing 1", "dresses", 11.0]
    first = json.loads(answer.to_json(orient="records"))[0]
    assert first["title"] is None and first["category"] is None and first["price"] is None
