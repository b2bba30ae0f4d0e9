"""Offline evaluation protocols (docs/evaluation.md): full ranking, never sampled negatives.

`build_evaluation_task` turns a split and a stage into what every model is asked: the users
with at least one positive in the window, their positives, the items each must not be shown
(masked history), and the items recommendable at the cut-off. `evaluate_scorer` scores any
model through the same code, so model and baselines are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import EvaluationConfig
from components.data.split import DataSplit, Stage
from components.evaluation.metrics import (
    mask_rows,
    mean_over_users,
    padded_score_block,
    per_user_metrics,
    top_k_padded,
)
from components.interfaces import Scorer

#: Scores one evaluation batch may hold (float32: 64 MiB), and its most users.
SCORE_CELLS = 1 << 24
MAX_BATCH_USERS = 1024


@dataclass(frozen=True)
class EvaluationTask:
    stage: Stage
    user_ids: np.ndarray
    item_ids: np.ndarray
    relevant: sp.csr_matrix
    excluded: sp.csr_matrix
    recommendable: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    n_users: int


def build_evaluation_task(
    split: DataSplit, stage: Stage, config: EvaluationConfig
) -> EvaluationTask:
    items = split.tables.items
    item_ids = items["item_id"].to_numpy(dtype=object)
    item_index = pd.Index(item_ids)
    window = split.window(stage)
    window = positive_window(window, config)
    user_ids = np.sort(window["user_id"].unique().astype(object))
    if len(user_ids) == 0:
        raise ValueError(
            f"no {stage} interaction counts as a positive (evaluation.positive_events="
            f"{config.positive_events}); widen the window or the event list"
        )
    user_index = pd.Index(user_ids)
    relevant = _pairs_matrix(window, user_index, item_index)
    excluded = _pairs_matrix(masked_history(split.history(stage), config), user_index, item_index)
    recommendable = split.available_items(split.cutoff(stage)).to_numpy(bool)
    return EvaluationTask(
        stage=stage,
        user_ids=user_ids,
        item_ids=item_ids,
        relevant=relevant,
        excluded=excluded,
        recommendable=recommendable,
    )


def scoring_batch_size(n_columns: int) -> int:
    """Users `rank_items` scores at a time over `n_columns` items: as many as keep a batch's
    scores within `SCORE_CELLS`, at most `MAX_BATCH_USERS` (shards of whole batches score
    the same batches as one pass over every user)."""
    return min(MAX_BATCH_USERS, max(1, SCORE_CELLS // max(n_columns, 1)))


def rank_items(
    scorer: Scorer, task: EvaluationTask, k: int, batch_size: int | None = None
) -> np.ndarray:
    """Top-k item indices per task user, masked and restricted to recommendable items.

    Only the recommendable items are scored: the others could never be ranked (a -inf
    score is never in a list), and on a marketplace most of the catalogue has sold (90k
    users: 340k of 680k listings live at the cut-off). Users are scored `batch_size` at a
    time (`scoring_batch_size` of the recommendable items by default): memory bounded by
    the catalogue's size, not only by the users'.

    Each batch's float32 scores go into one reused padded block, masked in place from the CSR
    arrays of `task.excluded`, then ranked by `top_k_padded` (exact: ties to the lower item,
    and the recommendable items keep the catalogue's order).
    """
    n_items = len(task.item_ids)
    k = min(k, n_items)
    ranked = np.full((task.n_users, k), -1, dtype=np.int64)
    columns = np.flatnonzero(task.recommendable)
    depth = min(k, len(columns))
    if depth == 0:
        return ranked
    if batch_size is None:
        batch_size = scoring_batch_size(len(columns))
    item_ids = task.item_ids[columns]
    excluded = sp.csr_matrix(sp.csr_matrix(task.excluded)[:, columns])
    block = padded_score_block(
        min(batch_size, task.n_users), len(columns), depth, np.dtype(np.float32)
    )
    for start in range(0, task.n_users, batch_size):
        stop = min(start + batch_size, task.n_users)
        scores = block[: stop - start]
        batch = np.asarray(scorer.score(task.user_ids[start:stop], item_ids))
        if batch.shape != (stop - start, len(columns)):
            raise ValueError(
                f"{type(scorer).__name__}.score returned shape {batch.shape}: expected "
                f"{(stop - start, len(columns))}, one row per user and one column per item"
            )
        np.copyto(scores[:, : len(columns)], batch, casting="unsafe")
        mask_rows(scores, excluded.indptr[start : stop + 1], excluded.indices)
        top = top_k_padded(scores, len(columns), depth)
        ranked[start:stop, :depth] = np.where(top >= 0, columns[np.maximum(top, 0)], -1)
    return ranked


def evaluate_scorer(
    scorer: Scorer, task: EvaluationTask, ks: Sequence[int], batch_size: int | None = None
) -> EvaluationResult:
    ranked = rank_items(scorer, task, max(ks), batch_size)
    per_user = per_user_metrics(ranked, task.relevant, tuple(ks))
    metrics = {name: mean_over_users(values, task.relevant) for name, values in per_user.items()}
    return EvaluationResult(metrics=metrics, per_user=per_user, n_users=task.n_users)


def _pairs_matrix(frame: pd.DataFrame, user_index: pd.Index, item_index: pd.Index) -> sp.csr_matrix:
    rows = user_index.get_indexer(frame["user_id"])
    cols = item_index.get_indexer(frame["item_id"])
    keep = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])),
        shape=(len(user_index), len(item_index)),
    )
    matrix.data[:] = 1.0  # duplicates summed above; keep it binary
    matrix.sort_indices()
    return matrix


def masked_history(history: pd.DataFrame, evaluation: EvaluationConfig) -> pd.DataFrame:
    """The history rows whose items a user's list leaves out: those with an event of
    `evaluation.excluded_events` (every row with `mask_all_seen`). Evaluation, the bundle
    and the index refresh mask with it."""
    events = evaluation.excluded_events
    return history if events is None else history[history["event"].isin(events)]


def positive_window(window: pd.DataFrame, evaluation: EvaluationConfig) -> pd.DataFrame:
    """The window's interactions that count as positives for evaluation, of at most
    `evaluation.max_users` users (`evaluated_users_sample`)."""
    window = _positive_events(window, evaluation)
    users = evaluated_users_sample(window["user_id"], evaluation)
    if users is None:
        return window
    return window[window["user_id"].isin(users).to_numpy()]


def evaluated_users_sample(user_ids: pd.Series, evaluation: EvaluationConfig) -> np.ndarray | None:
    """The seeded sample of `evaluation.max_users` users when the window has more (None:
    every user is evaluated). Drawn from the sorted distinct ids, so the same window and
    seed always give the same users, whatever the rows' order."""
    if evaluation.max_users is None:
        return None
    distinct = np.sort(pd.unique(user_ids.astype(str)).astype(object))
    if len(distinct) <= evaluation.max_users:
        return None
    rng = np.random.default_rng(evaluation.users_sample_seed)
    return np.sort(rng.choice(distinct, evaluation.max_users, replace=False))


def window_user_count(window: pd.DataFrame, evaluation: EvaluationConfig) -> int:
    """Users with a positive in the window before any sampling (what the report sets the
    evaluated count against)."""
    return int(_positive_events(window, evaluation)["user_id"].nunique())


def _positive_events(window: pd.DataFrame, evaluation: EvaluationConfig) -> pd.DataFrame:
    if evaluation.positive_events is None:
        return window
    return window[window["event"].isin(evaluation.positive_events)]
