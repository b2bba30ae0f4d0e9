"""The two-tower's early-stopping check: valid-window recall on a seeded user sample."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from components.config import EvaluationConfig
from components.evaluation.encoder_validation import encoder_validation, sampled_users
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer
from tests.components.conftest import TOY_TWO_TOWER


class HashScores:
    """Fixed pseudo-random scores per (user, item)."""

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        return np.array(
            [
                [zlib.crc32(f"{user}|{item}".encode()) % 1000 for item in item_ids]
                for user in user_ids
            ],
            dtype=np.float32,
        )


def test_validation_is_recall_at_k_of_the_valid_window_on_sampled_users(toy_split):
    config = TOY_TWO_TOWER.model_copy(update={"early_stopping_users": 10, "early_stopping_k": 7})
    validation = encoder_validation(toy_split, config)
    assert validation is not None and validation.metric == "recall@7"
    task = sampled_users(
        build_evaluation_task(toy_split, "valid", EvaluationConfig()), 10, config.seed
    )
    scorer = HashScores()
    expected = evaluate_scorer(scorer, task, (7,)).metrics["recall@7"]
    assert validation(scorer) == {"recall@7": expected}


def test_no_valid_window_no_validation(toy_split):
    assert (
        encoder_validation(replace(toy_split, valid=toy_split.valid.iloc[:0]), TOY_TWO_TOWER)
        is None
    )


def test_early_stopping_samples_users_with_their_own_rows(toy_split):
    task = build_evaluation_task(toy_split, "valid", EvaluationConfig())
    assert sampled_users(task, task.n_users, seed=0) is task  # few users: all of them
    sample = sampled_users(task, task.n_users // 2, seed=0)
    assert sample.n_users == task.n_users // 2
    assert sample.n_users == sample.relevant.shape[0] == sample.excluded.shape[0]
    rows = {user: row for row, user in enumerate(task.user_ids)}
    for row, user in enumerate(sample.user_ids):
        original = rows[user]
        assert (sample.relevant[row] != task.relevant[original]).nnz == 0
        assert (sample.excluded[row] != task.excluded[original]).nnz == 0
    again = sampled_users(task, task.n_users // 2, seed=0)
    assert list(again.user_ids) == list(sample.user_ids)  # seeded
