"""Implicit ALS (`Ials`, Hu, Koren, Volinsky 2008) through `implicit`. The conventions
it shares with the other scorers are in `components.retrieval.user_item_scorer`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from components.config import IalsConfig
from components.retrieval.user_item_scorer import (
    _UserItemScorer,
    aligned_scores,
    batch_invariant_product,
    history_before,
    interaction_popularity,
    item_positions,
    user_item_matrix,
)

#: Threads of implicit's ALS solver (BLAS is held at 1); small, to share the machine.
IALS_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Ials(_UserItemScorer):
    """Implicit ALS (Hu, Koren, Volinsky 2008) through `implicit`; scores = U V^T.

    Confidence of a (user, item) pair is `alpha` times the summed `weight` column of its
    interactions (null weights count 1): repeated interactions and, for rating data, higher
    ratings count more. Fitted on the CPU with `IALS_THREADS` threads and the config seed.
    """

    name: ClassVar[str] = "ials"

    user_factors: np.ndarray
    item_factors: np.ndarray
    as_of: pd.Timestamp | None
    config: IalsConfig

    @classmethod
    def fit(
        cls, interactions: pd.DataFrame, config: IalsConfig, as_of: pd.Timestamp | None = None
    ) -> Ials:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        frame, as_of = history_before(interactions, as_of)
        weights = frame["weight"].astype(float).fillna(1.0).to_numpy()
        matrix, user_index, item_index = user_item_matrix(frame, weights)
        # implicit's ALS is slow (and warns) when BLAS also multithreads.
        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=config.factors,
                regularization=config.regularization,
                alpha=config.alpha,
                iterations=config.iterations,
                num_threads=IALS_THREADS,
                random_state=config.seed,
            )
            model.fit(matrix.astype(np.float32), show_progress=False)
        popularity = interaction_popularity(frame, item_index)
        return cls(
            user_index=user_index,
            item_index=item_index,
            popularity=popularity,
            user_factors=np.asarray(model.user_factors, dtype=np.float32),
            item_factors=np.asarray(model.item_factors, dtype=np.float32),
            as_of=as_of,
            config=config,
        )

    _factor_columns: dict[int, tuple[Sequence[str], np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """As `_UserItemScorer.score`, but the product runs on the factors of `item_ids`
        only (zero rows for unknown items), remembered per catalogue list: a candidate
        source ranks the live listings, often a fraction of the items the model knows, and
        the full product would then be gathered into them (twice the work, one more copy
        of a batch x catalogue block)."""
        rows = self._user_rows.positions(user_ids)
        warm = rows >= 0
        factors = self._factors_of(item_ids)
        scores = np.empty((len(rows), len(factors)), dtype=np.float32)
        if (~warm).any():
            positions = item_positions(self._positions, self.item_index, item_ids)
            scores[~warm] = aligned_scores(self.popularity[None, :], positions)
        if warm.any():
            scores[warm] = batch_invariant_product(self.user_factors[rows[warm]], factors.T)
        return scores

    def _factors_of(self, item_ids: Sequence[str]) -> np.ndarray:
        hit = self._factor_columns.get(id(item_ids))
        if hit is not None and hit[0] is item_ids:
            return hit[1]
        positions = item_positions(self._positions, self.item_index, item_ids)
        factors = np.zeros((len(positions), self.item_factors.shape[1]), dtype=np.float64)
        known = positions >= 0
        factors[known] = self.item_factors[positions[known]]
        self._factor_columns.clear()
        self._factor_columns[id(item_ids)] = (item_ids, factors)
        return factors
