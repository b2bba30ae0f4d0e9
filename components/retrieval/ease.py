"""EASE (`Ease`, Steck 2019): a closed-form item x item linear model, and the dense Gram
matrix it inverts. The conventions it shares with the other scorers are in
`components.retrieval.user_item_scorer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from components.config import EaseConfig
from components.retrieval.user_item_scorer import (
    _UserItemScorer,
    history_before,
    interaction_popularity,
    user_item_matrix,
)

#: Cells (items x block columns) of one sparse block product while building a Gram matrix.
GRAM_BLOCK_CELLS = 16_000_000


def dense_gram(matrix: sp.csr_matrix, l2: float) -> np.ndarray:
    """X^T X + l2 I of a user x item matrix, dense float64 in Fortran order (so that LAPACK
    inverts it in place), built a block of item columns at a time: the sparse product of
    every column at once holds each co-occurring pair as a sparse entry, which on a dense
    co-occurrence costs more memory than the dense result itself."""
    n_items = matrix.shape[1]
    gram = np.zeros((n_items, n_items), dtype=np.float64, order="F")
    by_item = matrix.T.tocsr()
    columns = matrix.tocsc()
    step = max(1, GRAM_BLOCK_CELLS // max(n_items, 1))
    for start in range(0, n_items, step):
        stop = min(n_items, start + step)
        gram[:, start:stop] = (by_item @ columns[:, start:stop]).toarray()
    gram[np.diag_indices(n_items)] += l2
    return gram


@dataclass(frozen=True)
class Ease(_UserItemScorer):
    """EASE (Steck 2019): B = I - P / diag(P), P = (X^T X + l2 I)^-1, diag(B) = 0.

    X is the binary user x item matrix of the history; scores are X_u B. The inverse is
    taken in float64 (items^2 memory), scores are float32. Catalogues above
    `ease.max_items` are refused: use iALS for them (`fit_linear_baseline` switches).
    """

    name: ClassVar[str] = "ease"

    #: User x item binary history (CSR, float32).
    history: sp.csr_matrix
    #: Item x item weights (float32, zero diagonal).
    weights: np.ndarray
    as_of: pd.Timestamp | None
    config: EaseConfig

    @classmethod
    def fit(
        cls, interactions: pd.DataFrame, config: EaseConfig, as_of: pd.Timestamp | None = None
    ) -> Ease:
        frame, as_of = history_before(interactions, as_of)
        n_items = frame["item_id"].nunique()
        if n_items > config.max_items:
            raise ValueError(
                f"EASE needs an items x items inverse, but the history has {n_items:,} items "
                f"(ease.max_items = {config.max_items:,}); raise `ease.max_items` if "
                f"{n_items:,}^2 float64 values fit in memory, or use iALS (Ials.fit, or "
                "fit_linear_baseline, which switches automatically)"
            )
        matrix, user_index, item_index = user_item_matrix(frame)
        matrix.data[:] = 1.0
        gram = dense_gram(matrix, config.l2)
        # In place (Fortran order): one items^2 float64 matrix instead of three.
        weights = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        del gram
        weights /= -np.diag(weights).copy()
        np.fill_diagonal(weights, 0.0)
        popularity = interaction_popularity(frame, item_index)
        return cls(
            user_index=user_index,
            item_index=item_index,
            popularity=popularity,
            history=matrix.astype(np.float32),
            # C order: scipy's sparse @ dense copies a Fortran-ordered matrix on every call.
            weights=np.ascontiguousarray(weights, dtype=np.float32),
            as_of=as_of,
            config=config,
        )

    def _warm_scores(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.history[rows] @ self.weights, dtype=np.float32)
