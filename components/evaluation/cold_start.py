"""The cold-start evaluation task: how well a model ranks listings created after its
cut-off (a served two-tower embeds them from their attributes when they are posted).
Scored like any task, with `components.evaluation.protocol.evaluate_scorer`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from components.config import EvaluationConfig
from components.data.split import DataSplit, Stage
from components.evaluation.protocol import EvaluationTask, build_evaluation_task


def cold_start_task(
    split: DataSplit, config: EvaluationConfig, stage: Stage = "test"
) -> EvaluationTask:
    """Evaluation task for listings created inside the `stage` window (after its cut-off).

    Candidates: the listings available at the cut-off plus those created during the window
    (as a served system that embeds new listings when they are posted); relevant: each
    user's positives on those new listings only; users: those with at least one. Masking
    is the standard protocol's.
    """
    base = build_evaluation_task(split, stage, config)
    cutoff = split.cutoff(stage)
    if cutoff is None:
        raise ValueError(
            "cold_start_task needs a temporal split: a fixed split has no cut-off and no "
            "listing creation times"
        )
    created = split.tables.items["created_at"]
    window_end = split.window(stage)["ts"].max()
    new = ((created > cutoff) & (created <= window_end)).fillna(False).to_numpy(bool)
    relevant = sp.csr_matrix(base.relevant.multiply(new[None, :].astype(np.float32)))
    relevant.eliminate_zeros()
    keep = np.diff(relevant.indptr) > 0
    if not keep.any():
        raise ValueError(f"no {stage} positive falls on a listing created inside the window")
    return replace(
        base,
        user_ids=base.user_ids[keep],
        relevant=sp.csr_matrix(relevant[keep]),
        excluded=sp.csr_matrix(base.excluded[keep]),
        recommendable=base.recommendable | new,
    )
