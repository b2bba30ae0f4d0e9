"""Collaborative candidate models: co-visitation, EASE, iALS. They are retrieval sources
of the stack and, fitted the same way, the baselines every model is scored beside
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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from components.config import (
    BaselinesConfig,
    CandidatesConfig,
    CovisitationConfig,
    EaseConfig,
    IalsConfig,
)
from components.ids import IdPositions

#: Threads of implicit's ALS solver (BLAS is held at 1); small, to share the machine.
IALS_THREADS = min(4, os.cpu_count() or 1)
#: Share of co-visiting item pairs above which the co-visitation matrix is kept dense
#: (faster scoring; e.g. item-kNN on a fixed split where a user's history is one session).
DENSE_SIMILARITY_SHARE = 0.1


# ------------------------------------------------------------------------- shared helpers


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


def _aligned_scores(model_scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
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
        return _aligned_scores(model_scores, positions)

    @cached_property
    def _user_rows(self) -> IdPositions:
        return IdPositions(self.user_index)

    def _warm_scores(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# ------------------------------------------------------------------------- co-visitation


@dataclass(frozen=True)
class Covisitation(_UserItemScorer):
    """Item-to-item co-visitation: items seen in the same session as the user's recent items.

    Sessions are a user's interactions split where the gap between two consecutive ones
    exceeds `session_gap`; only sessions ending inside `window` before `as_of` count.
    Co-visit counts C = S^T S (diagonal zeroed) over the session x item matrix S, whose
    entries are the strongest event weight of the item in the session. C is cosine-normalised
    (C_ij / sqrt(n_i n_j), n_i = S^T S diagonal) so that very popular items do not
    co-occur with everything (well above raw counts and C_ij / n_i on ml-1m-lcfn valid,
    a little below them on the synthetic valid). A user's scores sum C over their
    `recent_items` most recent distinct items (from their whole history before `as_of`,
    not only the window), equally weighted (1 / (1 + rank) weights scored lower). Figures:
    docs/models.md, "Measurements behind the defaults".

    Without timestamps (fixed splits) each user's whole history is one session and all
    their items seed the scores: plain item-kNN by co-occurrence (cosine).

    Items with no co-visit with the user's items are ranked after those with one, by
    training popularity: a row's scores are 1 + s / max(s) where s > 0, the popularity
    share (< 1) elsewhere.
    """

    name: ClassVar[str] = "covisitation"

    #: Item x item normalised co-visit weights (float32; dense once 10% of pairs co-occur).
    similarity: sp.csr_matrix | np.ndarray
    #: User x item seed weights (1 for each of the user's recent items, CSR, float32).
    seeds: sp.csr_matrix
    as_of: pd.Timestamp | None
    config: CovisitationConfig

    @classmethod
    def fit(
        cls,
        interactions: pd.DataFrame,
        config: CovisitationConfig,
        as_of: pd.Timestamp | None = None,
    ) -> Covisitation:
        frame, as_of = history_before(interactions, as_of)
        weights = frame["event"].map(config.event_weights).astype(float).fillna(1.0)
        frame = frame.assign(_weight=weights.to_numpy())
        item_codes, item_index = pd.factorize(frame["item_id"], sort=True)
        frame = frame.assign(_item=item_codes)
        n_items = len(item_index)

        sessions = session_ids(frame, config.session_gap)
        in_window = np.ones(len(frame), dtype=bool)
        if as_of is not None and config.window is not None:
            session_end = frame["ts"].groupby(sessions).transform("max")
            in_window = (session_end >= as_of - pd.Timedelta(config.window)).to_numpy()
        windowed = frame[in_window]
        similarity: sp.csr_matrix | np.ndarray = covisitation_matrix(
            sessions[in_window],
            windowed["_item"].to_numpy(),
            windowed["_weight"].to_numpy(),
            n_items,
        )
        if similarity.nnz >= DENSE_SIMILARITY_SHARE * n_items**2:
            similarity = similarity.toarray()
        popularity = item_popularity(
            windowed["_item"].to_numpy(), n_items, windowed["_weight"].to_numpy()
        )
        seeds, user_index = _recent_item_seeds(frame, n_items, config.recent_items, as_of)
        return cls(
            user_index=user_index,
            item_index=pd.Index(item_index),
            popularity=popularity,
            similarity=similarity,
            seeds=seeds,
            as_of=as_of,
            config=config,
        )

    def sparse_scores(
        self, user_ids: Sequence[str], item_ids: Sequence[str]
    ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray] | None:
        """`score` in two parts, for a top-n that costs the co-visits, not users x catalogue
        (None while the similarity is dense): the co-visited items' scores 1 + s / max(s)
        as CSR over `item_ids`; the user-independent score every other item gets (training
        popularity, 0 for unknown items); and its scale per user (0.999 warm, 1 cold)."""
        if not sp.issparse(self.similarity):
            return None
        rows = self._user_rows.positions(user_ids)
        warm = rows >= 0
        positions = item_positions(self._positions, self.item_index, item_ids)
        fallback = _aligned_scores(self.popularity[None, :], positions)[0]
        scale = np.where(warm, np.float32(0.999), np.float32(1.0)).astype(np.float32)
        columns = np.full(len(self.item_index), -1, dtype=np.int64)
        columns[positions[positions >= 0]] = np.flatnonzero(positions >= 0)
        # The warm rows' product exactly as `score` computes it (same sums, same floats).
        product = sp.csr_matrix(self.seeds[rows[warm]] @ self.similarity, dtype=np.float32)
        product.eliminate_zeros()
        coo = product.tocoo()
        entry_rows = np.flatnonzero(warm)[coo.row]
        row_max = np.zeros(len(rows), dtype=np.float32)
        np.maximum.at(row_max, entry_rows, coo.data)
        values = coo.data / row_max[entry_rows] + np.float32(1.0)
        kept = (coo.data > 0) & (columns[coo.col] >= 0)
        matrix = sp.csr_matrix(
            (values[kept], (entry_rows[kept], columns[coo.col[kept]])),
            shape=(len(rows), len(positions)),
            dtype=np.float32,
        )
        return matrix, fallback, scale

    def _warm_scores(self, rows: np.ndarray) -> np.ndarray:
        product = self.seeds[rows] @ self.similarity
        raw = product.toarray() if sp.issparse(product) else np.asarray(product)
        raw = raw.astype(np.float32, copy=False)
        row_max = raw.max(axis=1, keepdims=True)
        cold = raw <= 0
        # In place: a batch of users x catalogue is the bulk of an evaluation's memory.
        raw /= np.where(row_max > 0, row_max, np.float32(1.0))
        raw += np.float32(1.0)
        np.copyto(raw, self.popularity[None, :] * np.float32(0.999), where=cold)
        return raw


def session_ids(frame: pd.DataFrame, session_gap: str) -> np.ndarray:
    """Session number per row (aligned to `frame`): a new session starts at each user and
    wherever the time since the user's previous interaction exceeds `session_gap`.

    Rows without a timestamp all fall into one session per user.
    """
    if len(frame) == 0:
        return np.zeros(0, dtype=np.int64)
    users = pd.factorize(frame["user_id"])[0]
    ts = frame["ts"]
    if ts.isna().all():
        return users.astype(np.int64)
    times = _naive_times(ts)
    order = np.lexsort((times, users))
    sorted_users = users[order]
    sorted_ts = times[order]
    new_user = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    gap = np.r_[np.timedelta64(0, "us"), np.diff(sorted_ts)]
    starts = new_user | (gap > pd.Timedelta(session_gap).to_timedelta64())
    ids = np.empty(len(frame), dtype=np.int64)
    ids[order] = np.cumsum(starts) - 1
    return ids


def _naive_times(ts: pd.Series) -> np.ndarray:
    """datetime64 values (UTC, no zone) that numpy sorts and subtracts quickly."""
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.to_numpy()


def covisitation_matrix(
    sessions: np.ndarray, item_codes: np.ndarray, weights: np.ndarray, n_items: int
) -> sp.csr_matrix:
    """Cosine-normalised co-visits C_ij / sqrt(n_i n_j), C = S^T S with a zero diagonal.

    S (session x item) holds the strongest event weight of each item in each session, so
    that repeated views in one session do not multiply a pair's count.
    """
    session_codes = pd.factorize(sessions)[0]
    n_sessions = int(session_codes.max()) + 1 if len(session_codes) else 0
    incidence = _max_duplicates(session_codes, item_codes, weights, (n_sessions, n_items))
    counts = (incidence.T @ incidence).tocsr()
    norms = np.sqrt(counts.diagonal())
    counts = (counts - sp.diags(counts.diagonal())).tocsr()
    counts.eliminate_zeros()
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    scale = sp.diags(inverse)
    return (scale @ counts @ scale).astype(np.float32).tocsr()


def _max_duplicates(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    table = pd.DataFrame({"row": rows, "col": cols, "value": values})
    best = table.groupby(["row", "col"], sort=False)["value"].max().reset_index()
    return sp.csr_matrix(
        (best["value"].to_numpy(float), (best["row"].to_numpy(), best["col"].to_numpy())),
        shape=shape,
    )


def _recent_item_seeds(
    frame: pd.DataFrame, n_items: int, recent_items: int, as_of: pd.Timestamp | None
) -> tuple[sp.csr_matrix, pd.Index]:
    """User x item 0/1 seeds: each user's `recent_items` newest distinct items.

    Without timestamps there is no "recent": every item of the user is a seed.
    """
    user_codes, user_index = pd.factorize(frame["user_id"], sort=True)
    items = frame["_item"].to_numpy()
    if as_of is None:
        values = np.ones(len(frame))
        rows, cols = user_codes, items
    else:
        table = pd.DataFrame({"user": user_codes, "item": items, "ts": _naive_times(frame["ts"])})
        latest = table.groupby(["user", "item"], sort=False)["ts"].max().reset_index()
        latest = latest.sort_values(["user", "ts", "item"], ascending=[True, False, True])
        rank = latest.groupby("user").cumcount().to_numpy()
        keep = rank < recent_items
        rows = latest["user"].to_numpy()[keep]
        cols = latest["item"].to_numpy()[keep]
        values = np.ones(int(keep.sum()))
    seeds = sp.csr_matrix((values, (rows, cols)), shape=(len(user_index), n_items))
    seeds.sum_duplicates()
    seeds.data[:] = np.minimum(seeds.data, 1.0)
    return seeds.astype(np.float32), pd.Index(user_index)


# ------------------------------------------------------------------------- EASE


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


# ------------------------------------------------------------------------- iALS


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
            scores[~warm] = _aligned_scores(self.popularity[None, :], positions)
        if warm.any():
            scores[warm] = self.user_factors[rows[warm]] @ factors.T
        return scores

    def _factors_of(self, item_ids: Sequence[str]) -> np.ndarray:
        hit = self._factor_columns.get(id(item_ids))
        if hit is not None and hit[0] is item_ids:
            return hit[1]
        positions = item_positions(self._positions, self.item_index, item_ids)
        factors = np.zeros((len(positions), self.item_factors.shape[1]), dtype=np.float32)
        known = positions >= 0
        factors[known] = self.item_factors[positions[known]]
        self._factor_columns.clear()
        self._factor_columns[id(item_ids)] = (item_ids, factors)
        return factors


# ------------------------------------------------------------------------- wiring


def fit_linear_baseline(
    interactions: pd.DataFrame,
    config: BaselinesConfig | CandidatesConfig,
    as_of: pd.Timestamp | None = None,
) -> Ease | Ials:
    """EASE when the history's catalogue fits (<= ease.max_items items), iALS otherwise."""
    frame, as_of = history_before(interactions, as_of)
    if frame["item_id"].nunique() <= config.ease.max_items:
        return Ease.fit(frame, config.ease, as_of)
    return Ials.fit(frame, config.ials, as_of)
