"""The two-tower encoder's early-stopping check: valid-window recall of each epoch's model.

Training (`components.retrieval.two_tower_training`) takes a `components.interfaces.
Validation` from its caller instead of importing evaluation code; this module builds the
one the pipeline uses: exact full-ranking recall@`early_stopping_k` on the valid window,
masked as the evaluation protocol masks, over a seeded sample of at most
`early_stopping_users` of its users (every item is ranked for each of them: on a large
catalogue the full window costs seconds per epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from components.config import EvaluationConfig, TwoTowerConfig
from components.data.split import DataSplit
from components.evaluation.protocol import EvaluationTask, build_evaluation_task, evaluate_scorer
from components.interfaces import Scorer


@dataclass(frozen=True)
class TaskRecall:
    """Recall@k of a scorer on a fixed evaluation task (a `Validation`)."""

    task: EvaluationTask
    k: int

    @property
    def metric(self) -> str:
        return f"recall@{self.k}"

    def __call__(self, scorer: Scorer) -> dict[str, float]:
        result = evaluate_scorer(scorer, self.task, (self.k,))
        return {self.metric: result.metrics[self.metric]}


def encoder_validation(
    split: DataSplit, config: TwoTowerConfig, evaluation: EvaluationConfig | None = None
) -> TaskRecall | None:
    """The two-tower's early-stopping check on `split`'s valid window (None when the split
    has none: training then runs `max_epochs` epochs). Masking as `evaluation`; default:
    the protocol's defaults, every seen item masked for a fixed split."""
    if not len(split.valid):
        return None
    if evaluation is None:
        evaluation = EvaluationConfig(mask_all_seen=split.protocol == "fixed")
    task = build_evaluation_task(split, "valid", evaluation)
    return TaskRecall(
        sampled_users(task, config.early_stopping_users, config.seed), config.early_stopping_k
    )


def sampled_users(task: EvaluationTask, n_users: int, seed: int) -> EvaluationTask:
    """At most `n_users` of `task`'s users, a seeded sample with their own rows."""
    if task.n_users <= n_users:
        return task
    keep = np.sort(np.random.default_rng(seed).choice(task.n_users, n_users, replace=False))
    return replace(
        task,
        user_ids=task.user_ids[keep],
        relevant=sp.csr_matrix(task.relevant[keep]),
        excluded=sp.csr_matrix(task.excluded[keep]),
    )
