"""The model interfaces every layer may import: what a scorer and a candidate source
answer. Data, retrieval, ranking, evaluation and serving meet here and nowhere else, so
no ML package imports another one just for a type."""

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
