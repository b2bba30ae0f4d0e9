"""GF-CF (Shen et al., CIKM 2021): a training-free graph filter for large catalogues.

Scores of user u: r_u P + alpha * r_u D^-1/2 V_k^T V_k D^1/2, where r_u is the user's
binary history row, R~ = D_U^-1/2 R D_I^-1/2 the degree-normalised user x item matrix,
P = R~^T R~ its normalised item-item graph (a linear low-pass filter, sparse), and V_k the
top `factors` right singular vectors of R~ (an ideal low-pass filter). No item x item
inverse (EASE's items^2 memory): the graph is as sparse as the co-occurrences, so it suits
catalogues of tens of thousands to millions of items, on the CPU, in seconds to a minute.

Example
-------
>>> model = GraphFilter.fit(split.history("test"), GraphFilterConfig())  # doctest: +SKIP
>>> scores = model.score(["u1"], item_ids)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from components.config import GraphFilterConfig
from components.retrieval.user_item_scorer import (
    _UserItemScorer,
    batch_invariant_product,
    history_before,
    interaction_popularity,
    user_item_matrix,
)


@dataclass(frozen=True)
class GraphFilter(_UserItemScorer):
    """The GF-CF scorer (module docstring); cold users get the items' popularity."""

    name: ClassVar[str] = "graph_filter"

    #: User x item binary history (CSR, float32): the r_u of the scores.
    history: sp.csr_matrix
    #: The normalised item-item graph P (CSR, float32).
    item_graph: sp.csr_matrix
    #: D_I^-1/2 V_k^T (items x factors) and V_k D_I^1/2 (factors x items), float32.
    low_pass_in: np.ndarray
    low_pass_out: np.ndarray
    as_of: pd.Timestamp | None
    config: GraphFilterConfig

    @classmethod
    def fit(
        cls,
        interactions: pd.DataFrame,
        config: GraphFilterConfig,
        as_of: pd.Timestamp | None = None,
    ) -> GraphFilter:
        frame, as_of = history_before(interactions, as_of)
        matrix, user_index, item_index = user_item_matrix(frame)
        matrix.data[:] = 1.0
        matrix = matrix.astype(np.float32)
        user_degree = np.asarray(matrix.sum(axis=1)).ravel()
        item_degree = np.asarray(matrix.sum(axis=0)).ravel()
        normalised = (
            sp.diags(_inverse_sqrt(user_degree)) @ matrix @ sp.diags(_inverse_sqrt(item_degree))
        )
        normalised = sp.csr_matrix(normalised, dtype=np.float32)
        item_graph = sp.csr_matrix(normalised.T @ normalised, dtype=np.float32)
        factors = min(config.factors, min(normalised.shape) - 1)
        if factors >= 1:
            # A seeded start vector: ARPACK's own is random, and the filter must be
            # reproducible.
            start = np.random.default_rng(config.seed).standard_normal(min(normalised.shape))
            _, _, right = svds(normalised.astype(np.float64), k=factors, v0=start)
        else:
            right = np.zeros((0, len(item_index)))
        low_pass_in = right.T * _inverse_sqrt(item_degree)[:, None]
        low_pass_out = right * np.sqrt(item_degree)[None, :]
        popularity = interaction_popularity(frame, item_index)
        return cls(
            user_index=user_index,
            item_index=item_index,
            popularity=popularity,
            history=matrix,
            item_graph=item_graph,
            low_pass_in=np.ascontiguousarray(low_pass_in, dtype=np.float32),
            low_pass_out=np.ascontiguousarray(low_pass_out, dtype=np.float32),
            as_of=as_of,
            config=config,
        )

    @cached_property
    def _low_pass_out_64(self) -> np.ndarray:
        """`low_pass_out` in float64, converted once rather than per batch of users."""
        return self.low_pass_out.astype(np.float64)

    def _warm_scores(self, rows: np.ndarray) -> np.ndarray:
        history = self.history[rows]
        scores = np.asarray((history @ self.item_graph).toarray(), dtype=np.float32)
        if self.config.alpha and len(self.low_pass_in):
            scores += self.config.alpha * batch_invariant_product(
                history @ self.low_pass_in, self._low_pass_out_64
            )
        return scores


def _inverse_sqrt(degree: np.ndarray) -> np.ndarray:
    safe = np.where(degree > 0, degree, 1.0)
    return np.where(degree > 0, safe**-0.5, 0.0).astype(np.float32)
