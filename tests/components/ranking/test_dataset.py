from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import RankerConfig
from components.ranking.dataset import (
    attach_labels,
    graded_labels,
    holdout_interactions,
    query_groups,
    split_users,
)


def _window(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "event", "weight"])


def test_labels_take_the_best_grade_of_each_pair() -> None:
    window = _window(
        [
            ("u1", "a", "view", 1.0),
            ("u1", "a", "purchase", 1.0),
            ("u1", "b", "like", 1.0),
            ("u2", "a", "save", 1.0),
            ("u2", "c", "rating", 5.0),
            ("u2", "d", "rating", 2.0),
        ]
    )
    labels = graded_labels(window, RankerConfig()).set_index(["user_id", "item_id"])["label"]
    assert labels.to_dict() == {
        ("u1", "a"): 4,
        ("u1", "b"): 2,
        ("u2", "a"): 3,
        ("u2", "c"): 2,
        ("u2", "d"): 1,
    }


def test_attach_labels_marks_unlabelled_candidates_zero() -> None:
    labels = pd.DataFrame({"user_id": ["u1"], "item_id": ["a"], "label": [4]})
    candidates = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "a"]})
    assert attach_labels(candidates, labels)["label"].tolist() == [4, 0, 0]


def _candidates(rows_per_user: dict[str, int], positives: dict[str, int]) -> pd.DataFrame:
    parts = []
    for user, n in rows_per_user.items():
        label = np.zeros(n, dtype=np.int32)
        label[: positives.get(user, 0)] = 1
        parts.append(
            pd.DataFrame(
                {
                    "user_id": user,
                    "item_id": [f"{user}-{i}" for i in range(n)],
                    "retrieval_rank": np.arange(n, 0, -1, dtype=float),
                    "label": label[::-1],
                }
            )
        )
    return pd.concat(parts[::-1], ignore_index=True)


def test_training_groups_drop_users_without_positives_and_sample_negatives() -> None:
    frame = _candidates({"a": 50, "b": 30, "c": 20}, {"a": 3, "b": 0, "c": 1})
    groups = query_groups(frame, RankerConfig(max_negatives=10), seed=1)
    assert groups.frame["user_id"].tolist() == ["a"] * 13 + ["c"] * 11
    assert groups.sizes.tolist() == [13, 11]
    assert groups.sizes.sum() == len(groups.frame)
    assert groups.frame.groupby("user_id")["label"].sum().to_dict() == {"a": 3, "c": 1}
    # Within a query rows follow the retrieval rank.
    for _, rows in groups.frame.groupby("user_id"):
        assert rows["retrieval_rank"].is_monotonic_increasing


def test_groups_never_exceed_the_row_cap_and_keep_positives_first() -> None:
    frame = _candidates({"big": 12_000, "small": 5}, {"big": 7, "small": 1})
    config = RankerConfig(max_negatives=20_000, max_rows_per_query=10_000)
    groups = query_groups(frame, config, seed=0)
    assert groups.sizes.tolist() == [10_000, 5]
    assert int(groups.frame.loc[groups.frame["user_id"] == "big", "label"].sum()) == 7


def test_scoring_groups_keep_every_row_in_user_order() -> None:
    frame = _candidates({"b": 4, "a": 3}, {})
    groups = query_groups(frame, RankerConfig(), training=False)
    assert groups.sizes.tolist() == [3, 4]
    assert groups.frame["user_id"].tolist() == ["a"] * 3 + ["b"] * 4


def test_sampling_is_seeded() -> None:
    frame = _candidates({"a": 200}, {"a": 2})
    config = RankerConfig(max_negatives=10)
    first = query_groups(frame, config, seed=3).frame["item_id"].tolist()
    assert first == query_groups(frame, config, seed=3).frame["item_id"].tolist()
    assert first != query_groups(frame, config, seed=4).frame["item_id"].tolist()


def test_split_users_is_disjoint_and_covers_everyone() -> None:
    users = np.array([f"u{i}" for i in range(1000)] * 2, dtype=object)
    fit, held = split_users(users, 0.2, seed=0)
    assert not set(fit) & set(held)
    assert len(fit) + len(held) == 1000
    assert 150 < len(held) < 250


def test_holdout_partitions_each_users_interactions() -> None:
    train = pd.DataFrame(
        {
            "user_id": ["u1"] * 10 + ["u2"] * 5 + ["u3"],
            "item_id": [f"i{i}" for i in range(16)],
        }
    )
    kept, held = holdout_interactions(train, 0.2, seed=0)
    assert sorted(kept["item_id"].tolist() + held["item_id"].tolist()) == sorted(train["item_id"])
    assert held.groupby("user_id").size().to_dict() == {"u1": 2, "u2": 1}
    assert "u3" in set(kept["user_id"])


@pytest.mark.parametrize("share", [0.1, 0.5])
def test_holdout_is_seeded(share: float) -> None:
    train = pd.DataFrame({"user_id": ["u"] * 40, "item_id": [f"i{i}" for i in range(40)]})
    a = holdout_interactions(train, share, seed=5)[1]["item_id"].tolist()
    assert a == holdout_interactions(train, share, seed=5)[1]["item_id"].tolist()
    assert len(a) == int(40 * share)


def test_queries_are_a_user_in_one_label_window() -> None:
    frame = _candidates({"a": 6, "b": 4}, {"a": 1, "b": 1})
    frame = pd.concat(
        [frame.assign(label_window=0), frame.assign(label_window=1)], ignore_index=True
    )
    groups = query_groups(frame, RankerConfig(max_negatives=2), seed=0)
    assert groups.n_queries == 4 and groups.sizes.tolist() == [3, 3, 3, 3]
    keys = list(zip(groups.frame["label_window"], groups.frame["user_id"], strict=True))
    assert keys == sorted(keys)
