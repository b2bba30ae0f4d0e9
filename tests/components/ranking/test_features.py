from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import RankerConfig
from components.ranking.features import PointInTimeFeatures, feature_columns
from tests.conftest import make_tables

MOMENT = pd.Timestamp("2026-03-10T00:00:00Z")
ITEMS = {
    "a": {
        "category": "tops",
        "brand": "x",
        "size": "M",
        "price": 20.0,
        "seller_id": "s1",
        "created_at": "2026-03-01T00:00:00Z",
        "condition": "good",
    },
    "b": {
        "category": "tops",
        "brand": "y",
        "size": "S",
        "price": 40.0,
        "seller_id": "s1",
        "created_at": "2026-03-02T00:00:00Z",
        "sold_at": "2026-03-08T00:00:00Z",
    },
    "c": {
        "category": "shoes",
        "brand": "x",
        "size": "M",
        "price": 80.0,
        "seller_id": "s2",
        "created_at": "2026-03-03T00:00:00Z",
        "sold_at": "2026-03-12T00:00:00Z",
    },
    "d": {
        "category": "bags",
        "price": 10.0,
        "seller_id": "s2",
        "created_at": "2026-03-11T00:00:00Z",
    },
}
EVENTS = [
    ("u1", "a", "2026-03-05T10:00:00Z", "view"),
    ("u1", "b", "2026-03-06T10:00:00Z", "purchase"),
    ("u1", "c", "2026-03-09T00:00:00Z", "like"),
    ("u2", "a", "2026-02-20T10:00:00Z", "view"),
    # After the moment: must never show up.
    ("u1", "a", "2026-03-10T00:00:00Z", "purchase"),
    ("u2", "c", "2026-03-11T00:00:00Z", "purchase"),
]


def _tables():
    items = {k: dict(v) for k, v in ITEMS.items()}
    for attrs in items.values():
        for key in ("created_at", "sold_at"):
            if key in attrs:
                attrs[key] = pd.Timestamp(attrs[key])
    return make_tables(EVENTS, items)


def _candidates(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    users, items = zip(*pairs, strict=True)
    n = len(pairs)
    return pd.DataFrame(
        {
            "user_id": list(users),
            "item_id": list(items),
            "score": np.linspace(1, 0.5, n),
            "rank": np.arange(1, n + 1),
            "n_sources": np.ones(n, dtype=int),
            "score_popularity": np.linspace(1, 0.5, n),
            "rank_popularity": np.arange(1, n + 1, dtype=float),
        }
    )


def test_hand_computed_features_at_a_moment() -> None:
    tables = _tables()
    features = PointInTimeFeatures.build(tables.interactions, tables.items, MOMENT, RankerConfig())
    frame = features.transform(_candidates([("u1", "a"), ("u1", "c"), ("u2", "d")])).set_index(
        ["user_id", "item_id"]
    )
    u1a = frame.loc[("u1", "a")]
    assert u1a["u_events"] == 3 and u1a["u_purchases"] == 1 and u1a["u_items"] == 3
    assert u1a["u_days_since_last"] == pytest.approx(1.0)
    assert u1a["i_age_days"] == pytest.approx(9.0)
    assert u1a["i_log_price"] == pytest.approx(np.log1p(20.0))
    # Grades: view 1 + purchase 4 on tops, like 2 on shoes -> tops share 5/7.
    assert u1a["x_category_share"] == pytest.approx(5 / 7)
    assert u1a["x_brand_share"] == pytest.approx(3 / 7)  # a (view 1) and c (like 2) are brand x
    assert u1a["x_size_share"] == pytest.approx(3 / 7)
    # Item a: u1's view (1) and u2's view (1) before the moment; the later purchase unseen.
    assert u1a["i_pop_all"] == 2 and u1a["i_users"] == 2 and u1a["i_pop_7d"] == 1
    # Shares of all graded activity before the moment (view 1, purchase 4, like 2, view 1 =
    # 8) and in the last 7 days (u1's view, purchase and like = 7).
    assert u1a["i_pop_share_all"] == pytest.approx(2 / 8)
    assert u1a["i_pop_share_7d"] == pytest.approx(1 / 7)
    # Seller s1: a and b listed before the moment, b sold before it.
    assert u1a["i_seller_listings"] == 2 and u1a["i_seller_sales"] == 1
    u1c = frame.loc[("u1", "c")]
    # Seller s2: c listed (sold after the moment, so not a sale yet); d listed after.
    assert u1c["i_seller_listings"] == 1 and u1c["i_seller_sales"] == 0
    assert u1c["x_category_share"] == pytest.approx(2 / 7)
    u2d = frame.loc[("u2", "d")]
    assert u2d["i_age_days"] == pytest.approx(-1.0)  # listed after the moment
    assert np.isnan(u2d["x_brand_share"])  # d has no brand
    assert u2d["x_category_share"] == 0.0
    assert frame["retrieval_rank"].tolist() == [1.0, 2.0, 3.0]
    # Source scores 1, .75 (u1) and .5 (u2), each relative to the user's best.
    assert frame["rel_score_popularity"].tolist() == pytest.approx([1.0, 0.75, 1.0])
    assert str(frame["i_category"].dtype) == "category"


def test_popularity_windows_come_from_the_config() -> None:
    tables = _tables()
    config = RankerConfig(popularity_windows=("2D", "12h", "60D"))
    features = PointInTimeFeatures.build(tables.interactions, tables.items, MOMENT, config)
    frame = features.transform(_candidates([("u1", "a"), ("u1", "c")])).set_index("item_id")
    assert not any(c in frame for c in ("i_pop_1d", "i_pop_7d", "i_pop_28d"))
    # Before 03-10: a was viewed 03-05 (u1, grade 1) and 02-20 (u2, grade 1); c liked 03-09.
    assert frame.loc["a", ["i_pop_2d", "i_pop_12h", "i_pop_60d"]].tolist() == [0, 0, 2]
    assert frame.loc["c", ["i_pop_2d", "i_pop_12h", "i_pop_60d"]].tolist() == [2, 0, 2]
    # Nothing happened in the last 12 hours: every share of that window is 0, not NaN.
    assert frame["i_pop_share_12h"].tolist() == [0.0, 0.0]
    assert frame.loc["c", "i_pop_share_2d"] == 1.0


@pytest.mark.parametrize("windows", [("7D", "soon"), ("0D",), ("7D", "7d")])
def test_popularity_windows_must_be_distinct_positive_durations(windows) -> None:
    with pytest.raises(ValueError, match="popularity_windows"):
        RankerConfig(popularity_windows=windows)


def test_events_at_or_after_the_moment_never_change_the_features() -> None:
    """The leakage guard: whatever happens in the label window, features stay the same."""
    tables = _tables()
    config = RankerConfig()
    history = tables.interactions
    before = history[history["ts"] < MOMENT]
    flood = pd.DataFrame(
        {
            "user_id": ["u1"] * 50 + ["u2"] * 50,
            "item_id": ["c"] * 50 + ["a"] * 50,
            "ts": [MOMENT + pd.Timedelta(hours=h) for h in range(100)],
            "event": "purchase",
            "weight": 1.0,
        }
    )
    shifted = pd.concat([history, flood], ignore_index=True)
    pairs = [("u1", "a"), ("u1", "c"), ("u2", "a"), ("u2", "c")]
    reference = PointInTimeFeatures.build(before, tables.items, MOMENT, config).transform(
        _candidates(pairs)
    )
    for frame in (history, shifted):
        got = PointInTimeFeatures.build(frame, tables.items, MOMENT, config).transform(
            _candidates(pairs)
        )
        pd.testing.assert_frame_equal(got, reference)


def test_save_and_load_give_the_same_features(tmp_path: Path) -> None:
    tables = _tables()
    built = PointInTimeFeatures.build(tables.interactions, tables.items, MOMENT, RankerConfig())
    built.save(tmp_path / "features")
    loaded = PointInTimeFeatures.load(tmp_path / "features")
    pairs = _candidates([("u1", "a"), ("u2", "c"), ("nobody", "d"), ("u1", "unknown")])
    pd.testing.assert_frame_equal(loaded.transform(pairs), built.transform(pairs))


def test_categories_are_the_given_vocabularies() -> None:
    tables = _tables()
    features = PointInTimeFeatures.build(
        tables.interactions,
        tables.items,
        MOMENT,
        RankerConfig(),
        categories={"i_category": ["shoes", "tops"], "i_condition": ["good"]},
    )
    frame = features.transform(_candidates([("u1", "a"), ("u1", "d")]))
    assert list(frame["i_category"].cat.categories) == ["shoes", "tops"]
    assert frame["i_category"].tolist()[0] == "tops"
    assert pd.isna(frame["i_category"].tolist()[1])  # "bags" is not in the vocabulary


def test_no_timestamps_leave_time_features_unknown() -> None:
    tables = _tables()
    history = tables.interactions.assign(ts=pd.NaT)
    features = PointInTimeFeatures.build(history, tables.items, None, RankerConfig())
    frame = features.transform(_candidates([("u1", "a")]))
    assert np.isnan(frame["u_days_since_last"].iloc[0])
    assert np.isnan(frame["i_pop_7d"].iloc[0])
    assert frame["i_pop_all"].iloc[0] == 2 + 4  # grades of all of a's events
    assert np.isnan(frame["i_pop_share_7d"].iloc[0])
    assert frame["i_pop_share_all"].iloc[0] == pytest.approx(6 / 16)  # of all six events' 16
    assert "label" not in feature_columns(frame) and "user_id" not in feature_columns(frame)


def test_a_catalogue_without_attributes_saves_and_loads(tmp_path: Path) -> None:
    """Fixed benchmark splits have item ids only: no affinities, nothing to fail on."""
    history = pd.DataFrame(
        {
            "user_id": ["u"],
            "item_id": ["i"],
            "ts": [pd.NaT],
            "event": ["interaction"],
            "weight": [1.0],
        }
    )
    items = pd.DataFrame({"item_id": ["i", "j"]})
    built = PointInTimeFeatures.build(history, items, None, RankerConfig())
    built.save(tmp_path / "features")
    loaded = PointInTimeFeatures.load(tmp_path / "features")
    pairs = _candidates([("u", "j"), ("u", "i")])
    pd.testing.assert_frame_equal(loaded.transform(pairs), built.transform(pairs))
    assert loaded.transform(pairs)["x_category_share"].isna().all()
