"""Item-to-item co-visitation (`Covisitation`): items seen in the same session as the
user's recent items, and the session split and co-visit matrix it is built from. The
conventions it shares with the other scorers are in `components.retrieval.user_item_scorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import CovisitationConfig
from components.retrieval.user_item_scorer import (
    _UserItemScorer,
    aligned_scores,
    history_before,
    item_popularity,
    item_positions,
)

#: Share of co-visiting item pairs above which the co-visitation matrix is kept dense
#: (faster scoring; e.g. item-kNN on a fixed split where a user's history is one session).
DENSE_SIMILARITY_SHARE = 0.1


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
        fallback = aligned_scores(self.popularity[None, :], positions)[0]
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
