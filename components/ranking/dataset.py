"""Learning-to-rank training sets: graded labels, query groups, and the label holdout.

A query is one user's candidates. LightGBM wants rows sorted by query and `group` = rows per
query; lambdarank learns nothing from a query without a positive, and refuses queries of
more than 10,000 rows, so training sets drop the former and cap the latter, keeping every
positive and a seeded sample of negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import RankerConfig
from components.ranking.features import event_grades


def graded_labels(window: pd.DataFrame, config: RankerConfig) -> pd.DataFrame:
    """(user_id, item_id, label): the best grade of each pair's events in `window`."""
    frame = pd.DataFrame(
        {
            "user_id": window["user_id"].astype(str).to_numpy(dtype=object),
            "item_id": window["item_id"].astype(str).to_numpy(dtype=object),
            "label": event_grades(window, config),
        }
    )
    labels = frame.groupby(["user_id", "item_id"], sort=False)["label"].max().reset_index()
    labels["label"] = labels["label"].astype(np.int32)
    return labels


def attach_labels(candidates: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """`candidates` with a `label` column (0 where the pair has no label event)."""
    keys = pd.MultiIndex.from_arrays(
        [labels["user_id"].astype(object), labels["item_id"].astype(object)]
    )
    wanted = pd.MultiIndex.from_arrays(
        [
            candidates["user_id"].astype(str).to_numpy(dtype=object),
            candidates["item_id"].astype(str).to_numpy(dtype=object),
        ]
    )
    position = keys.get_indexer(wanted)
    label = np.zeros(len(candidates), dtype=np.int32)
    found = position >= 0
    label[found] = labels["label"].to_numpy()[position[found]]
    return candidates.assign(label=label)


@dataclass(frozen=True)
class QueryGroups:
    """Rows sorted by query, and the row count of each query in that order."""

    frame: pd.DataFrame
    sizes: np.ndarray

    @property
    def n_queries(self) -> int:
        return len(self.sizes)


def query_groups(
    frame: pd.DataFrame,
    config: RankerConfig,
    *,
    training: bool = True,
    sample_negatives: bool = True,
    seed: int = 0,
) -> QueryGroups:
    """Sort by query (user, or label window and user) then retrieval rank; count rows per
    query (`query_group_rows` picks and orders the rows; the wide frame is taken once)."""
    frame = frame.reset_index(drop=True)
    keys = frame[[c for c in QUERY_KEYS if c in frame]]
    rows, sizes = query_group_rows(
        keys, config, training=training, sample_negatives=sample_negatives, seed=seed
    )
    return QueryGroups(frame=frame.take(rows).reset_index(drop=True), sizes=sizes)


#: The columns that decide a training set's rows and their order.
QUERY_KEYS = ("user_id", "label", "label_window", "retrieval_rank")


def query_group_rows(
    keys: pd.DataFrame,
    config: RankerConfig,
    *,
    training: bool = True,
    sample_negatives: bool = True,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(row labels of `keys`'s index in query order, rows per query): the rows of a
    training set, decided on the QUERY_KEYS columns alone, so that the wide feature rows
    can be read afterwards, only those kept.

    With `training`: drop users without a positive label, keep every positive and (with
    `sample_negatives`) at most `config.max_negatives` random negatives per user (seeded),
    and cap each query at `config.max_rows_per_query` rows (positives first, best grades
    first). Without it (scoring) every row is kept.
    """
    if "user_id" not in keys or (training and "label" not in keys):
        raise ValueError("ranking rows need user_id (and label for training) columns")
    query = keys["user_id"].astype(str)
    if "label_window" in keys:
        query = keys["label_window"].astype(str) + "|" + query
    rows = pd.DataFrame({"_query": query.to_numpy(dtype=object)}, index=keys.index)
    if "retrieval_rank" in keys:
        rows["retrieval_rank"] = keys["retrieval_rank"].to_numpy()
    if training:
        label = keys["label"].to_numpy()
        has_positive = pd.Series(label > 0).groupby(rows["_query"].to_numpy()).transform("any")
        rows = rows[has_positive.to_numpy()]
        label = label[has_positive.to_numpy()]
        rng = np.random.default_rng(seed)
        noise = rng.random(len(rows))
        positive = label > 0
        # Positives first (best grade first), then negatives in random order.
        order_key = np.where(positive, -label.astype(float), noise)
        rows = rows.assign(_positive=positive, _key=order_key)
        rows = rows.sort_values(["_query", "_positive", "_key"], ascending=[True, False, True])
        negative_rank = (~rows["_positive"]).groupby(rows["_query"]).cumsum()
        if sample_negatives:
            keep = rows["_positive"] | (negative_rank <= config.max_negatives)
            rows = rows[keep.to_numpy()]
        position = rows.groupby("_query").cumcount()
        rows = rows[(position < config.max_rows_per_query).to_numpy()]
    sort_by = ["_query", "retrieval_rank"] if "retrieval_rank" in rows else ["_query"]
    rows = rows.sort_values(sort_by, kind="stable")
    sizes = rows.groupby("_query", sort=False).size().to_numpy(dtype=np.int64)
    return rows.index.to_numpy(), sizes


def split_users(
    user_ids: pd.Series | np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Users split at random into (fit, early-stopping) parts, `share` in the second."""
    users = np.sort(pd.unique(np.asarray(user_ids, dtype=object)))
    rng = np.random.default_rng(seed)
    held = rng.random(len(users)) < share
    if len(users) >= 2 and not held.any():
        held[rng.integers(len(users))] = True
    if held.all() and len(users) >= 2:
        held[rng.integers(len(users))] = False
    return users[~held], users[held]


def holdout_interactions(
    train: pd.DataFrame, share: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, held out): a random `share` of each user's interactions held out as ranker
    labels (fixed splits have no time to cut on). Users with one interaction keep it."""
    train = train.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    noise = rng.random(len(train))
    order = pd.Series(noise).groupby(train["user_id"].to_numpy()).rank(method="first")
    sizes = train.groupby("user_id")["user_id"].transform("size").to_numpy()
    n_held = np.floor(sizes * share).astype(int)
    held = (order.to_numpy() <= n_held) & (sizes > 1)
    return train[~held].reset_index(drop=True), train[held].reset_index(drop=True)
