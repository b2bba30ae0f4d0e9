"""The two-tower network: the towers, their inputs and the training loss.

Item tower: a listing's content (attributes, price and age buckets, hashed title n-grams;
see `components.retrieval.item_features`) through an MLP, plus an item-id embedding that is
dropped out in training (`item_id_dropout`), so the content path stands on its own and a
listing posted a minute ago is embedded from its attributes alone. User tower: the weighted
mean of the item-tower outputs of the user's last `history_length` interactions before
`as_of` (weights: event type x recency half-life, `pooling_weights`), a residual MLP with an
activity bucket (and optionally a user-id embedding); users with no history get a learned
cold-user vector. Both outputs are L2-normalised: scores are cosines, ready for an angular
Annoy index.

Also here, because training and inference both build them: the towers' input batches
(`ItemBatch`, `HistoryBatch`), the history index they pool user histories from
(`HistoryIndex`), and `sampled_softmax_loss`. The training loop is in
`components.retrieval.two_tower_training`, the fitted encoder in
`components.retrieval.two_tower`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional

from components.config import TwoTowerConfig
from components.retrieval.item_features import UNKNOWN, ItemArrays, ItemFeaturizer

#: Activity buckets of the user tower: floor(log2(1 + interactions before as_of)), capped.
N_ACTIVITY_BUCKETS = 16
#: Microseconds per second (timestamps are epoch microseconds).
US_PER_SECOND = 1_000_000

# =========================================================================== the towers


class ItemTower(nn.Module):
    """Listing features -> L2-normalised vector: content MLP + (optional) id embedding."""

    def __init__(
        self,
        vocabulary_sizes: Sequence[int],
        n_price_buckets: int,
        n_age_buckets: int,
        n_item_ids: int,
        config: TwoTowerConfig,
    ) -> None:
        super().__init__()
        width = config.feature_dim
        offsets = np.concatenate([[0], np.cumsum(vocabulary_sizes)[:-1]])
        self.register_buffer("categorical_offsets", torch.as_tensor(offsets, dtype=torch.long))
        self.categorical = nn.Embedding(int(sum(vocabulary_sizes)), width)
        self.price = nn.Embedding(n_price_buckets, width)
        self.age = nn.Embedding(n_age_buckets, width)
        self.text = nn.EmbeddingBag(config.text_buckets, width, mode="mean")
        n_inputs = width * (len(vocabulary_sizes) + 3)
        self.content = nn.Sequential(
            nn.Linear(n_inputs, config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, config.embedding_dim),
        )
        for table in (self.categorical, self.price, self.age, self.text):
            nn.init.normal_(table.weight, std=0.1)
        self.item_id: nn.Embedding | None = None
        if config.use_item_id:
            self.item_id = nn.Embedding(
                n_item_ids + 1,
                config.embedding_dim,
                padding_idx=UNKNOWN,
                sparse=n_item_ids + 1 > config.sparse_id_rows,
            )
            nn.init.normal_(self.item_id.weight, std=0.1)
            with torch.no_grad():
                self.item_id.weight[UNKNOWN].zero_()

    def forward(self, features: ItemBatch, same_content: bool = False) -> torch.Tensor:
        """`same_content`: every row has the same content features (a catalogue without
        any, e.g. a fixed split): the content path runs on the first row only and is
        broadcast, which is the same function at a fraction of the cost."""
        n = features.ids.shape[0]
        if same_content and n > 1:
            end = features.text_offsets[1] if len(features.text_offsets) > 1 else None
            first = replace(
                features,
                ids=features.ids[:1],
                categorical=features.categorical[:1],
                price=features.price[:1],
                age=features.age[:1],
                text=features.text[:end],
                text_offsets=features.text_offsets[:1],
            )
            vectors = self._content(first).expand(n, -1)
        else:
            vectors = self._content(features)
        if self.item_id is not None:
            vectors = vectors + self.item_id(features.ids)
        return functional.normalize(vectors, dim=1)

    def _content(self, features: ItemBatch) -> torch.Tensor:
        n = features.ids.shape[0]
        categorical = self.categorical(features.categorical + self.categorical_offsets)
        text = self.text(features.text, features.text_offsets)
        inputs = torch.cat(
            [categorical.reshape(n, -1), self.price(features.price), self.age(features.age), text],
            dim=1,
        )
        return self.content(inputs)


class UserTower(nn.Module):
    """Weighted mean of history item vectors -> residual MLP (+ activity, + user id) ->
    L2-normalised vector; users with no history get the learned cold-user vector."""

    def __init__(self, n_user_ids: int, config: TwoTowerConfig) -> None:
        super().__init__()
        dim = config.embedding_dim
        self.activity = nn.Embedding(N_ACTIVITY_BUCKETS, config.feature_dim)
        nn.init.normal_(self.activity.weight, std=0.1)
        self.mlp = nn.Sequential(
            nn.Linear(dim + config.feature_dim, config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, dim),
        )
        self.cold = nn.Parameter(torch.randn(dim) * 0.1)
        self.user_id: nn.Embedding | None = None
        if config.use_user_id:
            self.user_id = nn.Embedding(
                n_user_ids + 1,
                dim,
                padding_idx=UNKNOWN,
                sparse=n_user_ids + 1 > config.sparse_id_rows,
            )
            nn.init.normal_(self.user_id.weight, std=0.1)
            with torch.no_grad():
                self.user_id.weight[UNKNOWN].zero_()

    def forward(self, item_vectors: torch.Tensor, bags: HistoryBatch) -> torch.Tensor:
        pooled = functional.embedding_bag(
            bags.items,
            item_vectors,
            bags.offsets,
            mode="sum",
            per_sample_weights=bags.weights,
        )
        activity = self.activity(bags.activity)
        vectors = pooled + self.mlp(torch.cat([pooled, activity], dim=1))
        if self.user_id is not None:
            vectors = vectors + self.user_id(bags.user_ids)
        cold = (bags.activity == 0).unsqueeze(1)
        vectors = torch.where(cold, self.cold.unsqueeze(0), vectors)
        return functional.normalize(vectors, dim=1)


class TwoTowerModel(nn.Module):
    def __init__(self, featurizer: ItemFeaturizer, n_user_ids: int, config: TwoTowerConfig) -> None:
        super().__init__()
        self.item_tower = ItemTower(
            featurizer.vocabulary_sizes,
            featurizer.n_price_buckets,
            featurizer.n_age_buckets,
            len(featurizer.item_ids),
            config,
        )
        self.user_tower = UserTower(n_user_ids, config)


@dataclass(frozen=True)
class ItemBatch:
    """Tensors of the item tower's inputs."""

    ids: torch.Tensor
    categorical: torch.Tensor
    price: torch.Tensor
    age: torch.Tensor
    text: torch.Tensor
    text_offsets: torch.Tensor

    @classmethod
    def from_arrays(
        cls, arrays: ItemArrays, age: np.ndarray, ids: np.ndarray | None = None
    ) -> ItemBatch:
        return cls(
            ids=torch.from_numpy(np.ascontiguousarray(arrays.ids if ids is None else ids)),
            categorical=torch.from_numpy(np.ascontiguousarray(arrays.categorical)),
            price=torch.from_numpy(np.ascontiguousarray(arrays.price)),
            age=torch.from_numpy(np.ascontiguousarray(age)),
            text=torch.from_numpy(np.ascontiguousarray(arrays.text)),
            text_offsets=torch.from_numpy(np.ascontiguousarray(arrays.text_offsets[:-1])),
        )


@dataclass(frozen=True)
class HistoryBatch:
    """Users' history bags over rows of an item-vector matrix: the user tower's input."""

    #: Row of each history entry in the item-vector matrix; bag u is
    #: items[offsets[u]:offsets[u+1]] (the last bag runs to the end).
    items: torch.Tensor
    offsets: torch.Tensor
    #: Pooling weight of each entry; each non-empty bag's weights sum to 1.
    weights: torch.Tensor
    #: Activity bucket of each user (0: no history, a cold user).
    activity: torch.Tensor
    user_ids: torch.Tensor


# =========================================================================== pooling weights


def pooling_weights(
    event_weights: np.ndarray,
    age_seconds: np.ndarray | None,
    half_life_seconds: float | None,
    bag_offsets: np.ndarray,
) -> np.ndarray:
    """History pooling weights: event weight x 0.5 ** (age / half-life), normalised to sum
    to 1 inside each bag (`bag_offsets`: n_bags + 1 boundaries). No ages or no half-life:
    event weights only."""
    weights = np.asarray(event_weights, dtype=np.float64).copy()
    if age_seconds is not None and half_life_seconds is not None:
        weights *= np.power(0.5, np.maximum(age_seconds, 0.0) / half_life_seconds)
    lengths = np.diff(bag_offsets)
    totals = np.add.reduceat(weights, bag_offsets[:-1][lengths > 0]) if len(weights) else weights
    per_bag = np.zeros(len(lengths))
    per_bag[lengths > 0] = totals
    denominators = np.repeat(per_bag, lengths)
    return np.divide(
        weights, denominators, out=np.zeros_like(weights), where=denominators > 0
    ).astype(np.float32)


def event_weight_array(events: pd.Series, config: TwoTowerConfig) -> np.ndarray:
    """Pooling weight of each event type (types missing from the config count 1.0)."""
    return events.astype("object").map(config.event_weights).fillna(1.0).to_numpy(np.float64)


def activity_buckets(counts: np.ndarray) -> np.ndarray:
    return np.minimum(np.floor(np.log2(1.0 + counts)), N_ACTIVITY_BUCKETS - 1).astype(np.int64)


# =========================================================================== the loss


def sampled_softmax_loss(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
    same_item: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax with the log-Q correction (Yi et al., RecSys 2019).

    `user_vectors` (B, d) and `item_vectors` (B + M, d): row i of the items is user i's
    positive, the other rows are its negatives (the batch's other positives, then M extra
    ones). logit_ij = <u_i, v_j> / temperature - log_q_j, where q_j is item j's expected
    count among the candidates, its sampling probability up to a constant (zeros: no
    correction). Candidates that
    are user i's positive item itself (`same_item[i, j]`, j != i) are masked out, since they
    are not negatives. Returns the mean cross-entropy of the positives.
    """
    logits = user_vectors @ item_vectors.T / temperature - log_q.unsqueeze(0)
    if same_item is not None:
        logits = logits.masked_fill(same_item, float("-inf"))
    labels = torch.arange(user_vectors.shape[0], device=user_vectors.device)
    return functional.cross_entropy(logits, labels)


# =========================================================================== history index


@dataclass(frozen=True)
class HistoryIndex:
    """Interactions sorted by user then time, with each row's catalogue row and weight."""

    #: User code (into `users`) of each row; rows of a user are contiguous.
    user_codes: np.ndarray
    users: pd.Index
    #: Row boundaries per user code: user u owns rows user_start[u]:user_start[u + 1].
    user_start: np.ndarray
    item_rows: np.ndarray
    #: Microseconds since the epoch, or None without timestamps.
    ts_us: np.ndarray | None
    event_weights: np.ndarray

    @classmethod
    def build(
        cls, frame: pd.DataFrame, catalogue_index: pd.Index, config: TwoTowerConfig
    ) -> HistoryIndex:
        has_time = bool(frame["ts"].notna().any()) if len(frame) else False
        user_codes, users = pd.factorize(frame["user_id"].astype("object"), sort=True)
        if has_time:
            ts_us = epoch_us(frame["ts"])
            order = np.lexsort((ts_us, user_codes))
            ts_us = ts_us[order]
        else:
            order = np.argsort(user_codes, kind="stable")
            ts_us = None
        user_codes = user_codes[order]
        item_rows = catalogue_index.get_indexer(frame["item_id"].astype("object"))[order]
        user_start = np.searchsorted(user_codes, np.arange(len(users) + 1))
        return cls(
            user_codes=user_codes,
            users=pd.Index(users),
            user_start=user_start,
            item_rows=item_rows,
            ts_us=ts_us,
            event_weights=event_weight_array(frame["event"], config)[order],
        )

    def __len__(self) -> int:
        return len(self.user_codes)


def bag_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated positions of [starts[i], ends[i]) and the n + 1 bag boundaries."""
    lengths = np.maximum(ends - starts, 0)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return positions.astype(np.int64), offsets


def half_life_seconds(config: TwoTowerConfig) -> float | None:
    """The pooling weights' recency half-life in seconds (None: no recency decay)."""
    if config.recency_half_life is None:
        return None
    return pd.Timedelta(config.recency_half_life).total_seconds()


def epoch_us(values: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch (UTC)."""
    stamps = pd.to_datetime(values, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(np.int64)
