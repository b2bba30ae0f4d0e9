"""The model interfaces every layer may import: what a scorer, a candidate source and a
trainer's early-stopping validation answer. Data, retrieval, ranking, evaluation and
serving meet here and nowhere else, so no ML package imports another one just for a type."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd


class Scorer(Protocol):
    """Anything that scores items for users: models, baselines, the served bundle."""

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(len(user_ids), len(item_ids)) scores, higher is better."""
        ...


class CandidateSource(Protocol):
    """A retrieval source: a few hundred plausible items per user, cheaply.

    `candidates` returns columns user_id, item_id, score (float), rank (1-based int, in
    order of non-increasing score), at most `n` rows per user, in the order of `user_ids`;
    never an item the source's filter forbids. Users it knows nothing about get no rows.
    """

    name: str

    def candidates(self, user_ids: Sequence[str], n: int) -> pd.DataFrame: ...


class Validation(Protocol):
    """A held-out check a trainer runs on its model after each epoch (early stopping).

    The caller builds it (e.g. `components.evaluation.encoder_validation`) and the trainer
    hands it a `Scorer` of its current model on the held-out window, so no training code
    imports evaluation code. `__call__` returns metrics by name; early stopping keeps the
    epoch with the highest `metric`.
    """

    @property
    def metric(self) -> str:
        """The metric early stopping maximises: a key of what `__call__` returns."""
        ...

    def __call__(self, scorer: Scorer) -> dict[str, float]: ...
