"""What the user x item scorers (co-visitation, EASE, iALS, RP3beta, the graph filter)
share: the history a model fitted `as_of` may see, the user x item matrix, the popularity
fallback of cold users, and the scorer base class. They are retrieval sources of the stack
and, fitted the same way, the baselines every model is scored beside
(`components.evaluation.baselines`).

Every model is a frozen dataclass with the same two calls as `RecentPopularity`:
`fit(interactions, config, as_of)` learns from the interactions strictly before `as_of`
(all of them without timestamps) and `score(user_ids, item_ids)` returns a float32
(users x items) matrix aligned to the requested items, so that `evaluate_scorer` compares
them with the model through one code path.

Shared conventions:
- Items the model never saw score 0.
- Users with no history before `as_of` ("cold") get the items' popularity in the data the
  model was fitted on (interaction counts, as a share of the top item), never an arbitrary
  order. Co-visitation counts them inside its window, with its event weights.

Example
-------
>>> covisitation = Covisitation.fit(split.history("test"), config.model.candidates.covisitation,
...                                  split.test_cutoff)  # doctest: +SKIP
>>> scores = covisitation.score(["u1", "u2"], item_ids)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.ids import IdPositions


def history_before(
    interactions: pd.DataFrame, as_of: pd.Timestamp | None
) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """The interactions a model fitted `as_of` may see, and the effective `as_of`.

    With timestamps: strictly before `as_of` (default: just after the last interaction),
    so nothing at or after the cut-off leaks in. Without timestamps (fixed splits): all
    rows, and `as_of` is None.
    """
    if not interactions["ts"].notna().any():
        return interactions, None
    if as_of is None:
        as_of = interactions["ts"].max() + pd.Timedelta(microseconds=1)
    return interactions[interactions["ts"] < as_of], as_of


def item_popularity(item_codes: np.ndarray, n_items: int, weights: np.ndarray) -> np.ndarray:
    """Weighted interaction counts per item as a share of the top item (float32, in [0, 1])."""
    counts = np.bincount(item_codes, weights=weights, minlength=n_items)
    top = counts.max() if len(counts) else 0.0
    return (counts / top if top > 0 else counts).astype(np.float32)


def interaction_popularity(frame: pd.DataFrame, item_index: pd.Index) -> np.ndarray:
    """Unweighted interaction counts of `item_index`'s items in `frame`, as a share of the
    top item: the cold-user scores of the user x item models."""
    return item_popularity(
        item_index.get_indexer(frame["item_id"]), len(item_index), np.ones(len(frame))
    )


def user_item_matrix(
    frame: pd.DataFrame, values: np.ndarray | None = None
) -> tuple[sp.csr_matrix, pd.Index, pd.Index]:
    """CSR users x items (duplicates summed; ones when `values` is None) and both indexes."""
    user_codes, user_index = pd.factorize(frame["user_id"], sort=True)
    item_codes, item_index = pd.factorize(frame["item_id"], sort=True)
    data = np.ones(len(frame)) if values is None else values
    matrix = sp.csr_matrix(
        (data, (user_codes, item_codes)), shape=(len(user_index), len(item_index))
    )
    matrix.sum_duplicates()
    return matrix, pd.Index(user_index), pd.Index(item_index)


def item_positions(
    cache: dict[int, tuple[Sequence[str], np.ndarray]],
    model_items: pd.Index | np.ndarray,
    item_ids: Sequence[str],
) -> np.ndarray:
    """Positions of `item_ids` in `model_items` (-1: unknown), remembered for the last
    list object asked: candidate sources and `rank_items` pass the same catalogue list on
    every call, and re-indexing 30k string ids costs more than scoring one user."""
    hit = cache.get(id(item_ids))
    if hit is not None and hit[0] is item_ids:
        return hit[1]
    positions = pd.Index(model_items).get_indexer(pd.Index(np.asarray(item_ids, dtype=object)))
    cache.clear()
    cache[id(item_ids)] = (item_ids, positions)
    return positions


#: Rows of the float64 product computed at a time (`batch_invariant_product`).
PRODUCT_ROWS = 128


def batch_invariant_product(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """`left @ right` as float32, the same for a row whether it is multiplied alone or in a
    batch. BLAS picks another kernel, and so another summation order, for one row than for
    many: float32 products of the same user then differ in the last bit between a served
    request and an evaluation batch, enough to flip a LightGBM split. Summed in float64
    (errors near 1e-16) and rounded once to float32, the rows agree. `right` in float64
    already saves a conversion per call. Rows go `PRODUCT_ROWS` at a time, so the float64
    block beside the float32 result stays small (an evaluation batch of 1,024 users x 41k
    listings would otherwise hold 0.3 GB more)."""
    right = np.asarray(right, dtype=np.float64)
    left = np.asarray(left)
    product = np.empty((left.shape[0], right.shape[1]), dtype=np.float32)
    for start in range(0, left.shape[0], PRODUCT_ROWS):
        block = left[start : start + PRODUCT_ROWS].astype(np.float64)
        product[start : start + PRODUCT_ROWS] = block @ right
    return product


def aligned_scores(model_scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Columns of `model_scores` (model item order) at `positions`; unknown (-1) -> 0."""
    known = positions >= 0
    # One gather along rows (fast on C-ordered blocks), then zero the few unknown columns:
    # a boolean column mask on both sides costs several times more on large catalogues.
    out = np.take(model_scores, np.where(known, positions, 0), axis=1).astype(
        np.float32, copy=False
    )
    if not known.all():
        out[:, ~known] = 0.0
    return out


@dataclass(frozen=True)
class _UserItemScorer:
    """What the three baselines share: id indexes and the cold-user popularity fallback."""

    user_index: pd.Index
    item_index: pd.Index
    #: Training popularity per model item (share of the top item): the cold-user scores.
    popularity: np.ndarray
    _positions: dict[int, tuple[Sequence[str], np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(len(user_ids), len(item_ids)) float32; unknown items 0, cold users popularity."""
        rows = self._user_rows.positions(user_ids)
        warm = rows >= 0
        model_scores = np.empty((len(rows), len(self.item_index)), dtype=np.float32)
        model_scores[~warm] = self.popularity
        if warm.any():
            model_scores[warm] = self._warm_scores(rows[warm])
        positions = item_positions(self._positions, self.item_index, item_ids)
        return aligned_scores(model_scores, positions)

    @cached_property
    def _user_rows(self) -> IdPositions:
        return IdPositions(self.user_index)

    def _warm_scores(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError
