from collections.abc import Sequence

import numpy as np
import pytest

from components.config import EvaluationConfig, SplitConfig
from components.data.split import split_tables
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer, rank_items
from tests.conftest import make_tables

EVENTS = [
    ("u1", "bought", "2026-01-02T00:00:00Z", "purchase"),
    ("u1", "viewed", "2026-01-03T00:00:00Z", "view"),
    ("u2", "viewed", "2026-01-04T00:00:00Z", "view"),
    ("u1", "viewed", "2026-01-12T00:00:00Z", "like"),  # valid window
    ("u1", "bought", "2026-01-20T00:00:00Z", "view"),  # test: bought before, masked
    ("u1", "viewed", "2026-01-20T00:00:00Z", "view"),
    ("u2", "fresh", "2026-01-21T00:00:00Z", "view"),  # listed after the cut-off
    ("u3", "viewed", "2026-01-21T00:00:00Z", "save"),  # a cold user
]
ITEMS = {
    "fresh": {"created_at": "2026-01-19T06:00:00Z"},
    "sold": {"created_at": "2026-01-01T00:00:00Z", "sold_at": "2026-01-05T00:00:00Z"},
}


class FixedScores:
    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        row = np.array([self.scores.get(i, 0.0) for i in item_ids], dtype=np.float32)
        return np.tile(row, (len(user_ids), 1))


@pytest.fixture
def split():
    return split_tables(
        make_tables(EVENTS, ITEMS), SplitConfig(valid_duration="7D", test_duration="7D")
    )


def test_task_holds_users_with_positives_masks_and_availability(split):
    task = build_evaluation_task(split, "test", EvaluationConfig())
    assert list(task.user_ids) == ["u1", "u2", "u3"]
    items = list(task.item_ids)
    assert task.relevant[0, items.index("bought")] == 1
    assert task.excluded[0, items.index("bought")] == 1  # purchased before the cut-off
    assert task.excluded[1].nnz == 0
    assert not task.recommendable[items.index("fresh")]
    assert not task.recommendable[items.index("sold")]


def test_masked_and_unavailable_items_are_never_ranked(split):
    task = build_evaluation_task(split, "test", EvaluationConfig())
    scorer = FixedScores({"bought": 9, "fresh": 8, "sold": 7, "viewed": 1})
    ranked = rank_items(scorer, task, k=3)
    items = list(task.item_ids)
    assert ranked[0, 0] == items.index("viewed")
    assert items.index("bought") in ranked[1]  # u2 never bought it
    for row in ranked:
        assert items.index("fresh") not in row and items.index("sold") not in row


def test_only_recommendable_items_are_scored_and_lists_name_catalogue_items(split):
    task = build_evaluation_task(split, "test", EvaluationConfig())
    asked: list[list[str]] = []

    class Recording(FixedScores):
        def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
            asked.append(list(item_ids))
            return super().score(user_ids, item_ids)

    scores = {"bought": 9, "fresh": 8, "sold": 7, "viewed": 1}
    ranked = rank_items(Recording(scores), task, k=len(task.item_ids), batch_size=2)
    items = list(task.item_ids)
    live = [item for item, ok in zip(items, task.recommendable, strict=True) if ok]
    assert asked == [live, live]  # two batches, each over the live listings only
    assert ranked.shape == (3, len(items))
    # u2's list: the live items by score (ties to the earlier item), padded with -1.
    expected = sorted(live, key=lambda item: (-scores.get(item, 0.0), items.index(item)))
    assert [items[i] for i in ranked[1] if i >= 0] == expected
    assert (ranked[1, len(live) :] == -1).all()


def test_full_ranking_metrics_keep_unreachable_positives_in_the_denominator(split):
    task = build_evaluation_task(split, "test", EvaluationConfig(ks=(1, 2)))
    result = evaluate_scorer(FixedScores({"viewed": 2, "bought": 1}), task, ks=(1, 2))
    # u1: positives {bought, viewed}, bought masked -> 1/2; u2: {fresh} unreachable -> 0;
    # u3: {viewed} -> 1.
    assert result.metrics["recall@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert result.n_users == 3


def test_positive_events_filter_the_window(split):
    task = build_evaluation_task(split, "test", EvaluationConfig(positive_events=("save",)))
    assert list(task.user_ids) == ["u3"]
    with pytest.raises(ValueError, match="no test interaction counts as a positive"):
        build_evaluation_task(split, "test", EvaluationConfig(positive_events=("purchase",)))


def test_windows_above_max_users_are_evaluated_on_a_seeded_sample_of_that_many_users():
    import pandas as pd

    from components.evaluation.protocol import positive_window, window_user_count

    rows = [(f"u{n:03d}", f"i{n % 7}", "purchase") for n in range(200) for _ in range(2)]
    window = pd.DataFrame(rows, columns=["user_id", "item_id", "event"])
    config = EvaluationConfig(max_users=30, users_sample_seed=4)

    sampled = positive_window(window, config)
    again = positive_window(window.iloc[::-1], config)

    assert sampled["user_id"].nunique() == 30
    assert sorted(sampled["user_id"].unique()) == sorted(again["user_id"].unique())
    # every positive of a sampled user is kept, none of the others
    assert len(sampled) == 60
    assert window_user_count(window, config) == 200
    other_seed = positive_window(window, EvaluationConfig(max_users=30, users_sample_seed=5))
    assert set(other_seed["user_id"]) != set(sampled["user_id"])
    # at or under the limit, and with no limit, every user is evaluated
    assert positive_window(window, EvaluationConfig(max_users=200)).equals(window)
    assert positive_window(window, EvaluationConfig(max_users=None)).equals(window)


def test_the_evaluation_task_holds_only_the_sampled_users(split):
    full = build_evaluation_task(split, "test", EvaluationConfig())
    sampled = build_evaluation_task(split, "test", EvaluationConfig(max_users=2))
    assert full.n_users == 3
    assert sampled.n_users == 2
    assert set(sampled.user_ids) < set(full.user_ids)
