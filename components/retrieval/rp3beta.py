"""RP3beta (Paudel et al., ACM TiiS 2016; Dacrema et al. 2019): a three-step random walk
item -> user -> item on the bipartite interaction graph, with popular targets discounted.

Scores of user u: r_u W, where r_u is the user's binary history row and
W = D_I^-alpha R^T D_U^-alpha R D_I^-beta, diagonal zeroed: the walk's transition
probabilities (D_I^-1 R^T)(D_U^-1 R) raised elementwise to `alpha` (R is binary, so the
power falls on the degrees), each target item's column divided by its popularity to the
`beta`. Training-free and sparse like GF-CF's item graph, but with a user-degree exponent
and a popularity discount of its own: another ranking of the same graph, for the fusion.
`neighbours` keeps only each item's strongest links, computed block by block, so the
memory stays bounded by items x neighbours for catalogues of millions of items.

Example
-------
>>> model = Rp3Beta.fit(split.history("test"), Rp3BetaConfig())  # doctest: +SKIP
>>> scores = model.score(["u1"], item_ids)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import Rp3BetaConfig
from components.retrieval.user_item_scorer import (
    _UserItemScorer,
    history_before,
    interaction_popularity,
    user_item_matrix,
)

#: Item rows of W computed (and pruned) at a time.
ITEM_BLOCK = 4096


@dataclass(frozen=True)
class Rp3Beta(_UserItemScorer):
    """The RP3beta scorer (module docstring); cold users get the items' popularity."""

    name: ClassVar[str] = "rp3beta"

    #: User x item binary history (CSR, float32): the r_u of the scores.
    history: sp.csr_matrix
    #: The item x item walk W (CSR, float32), diagonal zeroed, pruned to `neighbours`.
    item_graph: sp.csr_matrix
    as_of: pd.Timestamp | None
    config: Rp3BetaConfig

    @classmethod
    def fit(
        cls,
        interactions: pd.DataFrame,
        config: Rp3BetaConfig,
        as_of: pd.Timestamp | None = None,
    ) -> Rp3Beta:
        frame, as_of = history_before(interactions, as_of)
        matrix, user_index, item_index = user_item_matrix(frame)
        matrix.data[:] = 1.0
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        user_degree = np.asarray(matrix.sum(axis=1)).ravel()
        item_degree = np.asarray(matrix.sum(axis=0)).ravel()
        to_users = sp.csr_matrix(
            sp.diags(_power(item_degree, -config.alpha)) @ matrix.T, dtype=np.float32
        )
        to_items = sp.csr_matrix(
            sp.diags(_power(user_degree, -config.alpha))
            @ matrix
            @ sp.diags(_power(item_degree, -config.beta)),
            dtype=np.float32,
        )
        blocks = []
        # A block of rows at a time, pruned or not: the walk of a 41k catalogue has 40M
        # links, and building it whole held several copies of them at once.
        for start in range(0, len(item_index), ITEM_BLOCK):
            walk = sp.csr_matrix(to_users[start : start + ITEM_BLOCK] @ to_items, dtype=np.float32)
            walk = _without_self_links(walk, start)
            if config.neighbours is not None:
                walk = _strongest_per_row(walk, config.neighbours)
            blocks.append(walk)
        item_graph = sp.csr_matrix(sp.vstack(blocks, format="csr"), dtype=np.float32)
        return cls(
            user_index=user_index,
            item_index=item_index,
            popularity=interaction_popularity(frame, item_index),
            history=matrix,
            item_graph=item_graph,
            as_of=as_of,
            config=config,
        )

    def _warm_scores(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray((self.history[rows] @ self.item_graph).toarray(), dtype=np.float32)


def _power(degree: np.ndarray, exponent: float) -> np.ndarray:
    """degree ** exponent where the degree is positive, 0 elsewhere (float32)."""
    safe = np.where(degree > 0, degree, 1.0)
    return np.where(degree > 0, safe**exponent, 0.0).astype(np.float32)


def _without_self_links(walk: sp.csr_matrix, first_row: int) -> sp.csr_matrix:
    """Rows first_row.. of W with W_ii dropped (an item never recommends itself)."""
    coo = walk.tocoo()
    keep = (coo.row + first_row != coo.col) & (coo.data != 0)
    return sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], coo.col[keep])), shape=walk.shape, dtype=np.float32
    )


def _strongest_per_row(walk: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Each row's k largest entries (ties to the lower column), the rest dropped."""
    coo = walk.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    rows = coo.row[order]
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    within = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    keep = order[within < k]
    return sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], coo.col[keep])), shape=walk.shape, dtype=np.float32
    )
