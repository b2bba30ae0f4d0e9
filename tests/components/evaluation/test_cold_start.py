"""The cold-start task: positives on listings created inside the window only."""

from __future__ import annotations

from components.config import EvaluationConfig
from components.evaluation.cold_start import cold_start_task
from components.evaluation.protocol import build_evaluation_task


def test_cold_start_task_keeps_only_positives_on_listings_created_in_the_window(toy_split):
    task = cold_start_task(toy_split, EvaluationConfig(), "test")
    item_ids = task.item_ids
    positives = set(item_ids[task.relevant.indices])
    assert positives == {"shoe_new", "bag_new"}
    recommendable = set(item_ids[task.recommendable])
    assert {"shoe_new", "bag_new"} <= recommendable
    standard = build_evaluation_task(toy_split, "test", EvaluationConfig())
    assert not {"shoe_new", "bag_new"} & set(item_ids[standard.recommendable])
    assert task.n_users == 30
