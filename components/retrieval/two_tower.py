"""Content-aware two-tower encoder: the learned retrieval model of rewear.

Item tower: a listing's content (attributes, price and age buckets, hashed title n-grams;
see `components.retrieval.item_features`) through an MLP, plus an item-id embedding that is
dropped out in training (`item_id_dropout`), so the content path stands on its own and a
listing posted a minute ago is embedded from its attributes alone. User tower: the weighted
mean of the item-tower outputs of the user's last `history_length` interactions before
`as_of` (weights: event type x recency half-life), a residual MLP with an activity bucket
(and optionally a user-id embedding); users with no history get a learned cold-user vector.
Both outputs are L2-normalised: scores are cosines, ready for an angular Annoy index.

Training: sampled softmax over (history before the target, target) pairs, with the log-Q
correction of Yi et al. (RecSys 2019): the logit of each candidate j is cos(u, v_j) /
temperature - log q_j, q_j the expected count of j among the candidates. Candidates are the
batch's other targets plus `extra_negatives` listings drawn uniformly among those live at
the batch's time (mixed negative sampling, Yang et al. 2020): q_j = B share_j + M / n_live.
With timestamps, every user's interactions are replayed in time order: a target's history
is what the user did strictly before it, targets are each (user, item) pair's first
interaction, and each batch is drawn from one `batch_window` of time, so its negatives are
listings live at about the same time and share_j is their popularity in that window. This
matters on a marketplace: with batches drawn from the whole history, log-Q teaches each
listing its lifetime popularity and stale listings that were once popular come back (valid
recall@100 on the synthetic data fell from .083 after one epoch to .057 after three; with
daily windows it holds at .09). The uniform negatives are what teaches freshness (listing
age): the other targets are as fresh as the positive, live stock mostly is not (.047 ->
.083 on the same data). Without timestamps (fixed splits) each training interaction is a
target whose history is a fresh sample of the user's other training items (leave-one-out),
never a valid/test item, and batches are drawn from all interactions.

Epochs and refit (`train_two_tower`): the model is fitted on `split.history("valid")` and
early-stopped on the valid window (exact full-ranking recall@`early_stopping_k`, history
masked as in the evaluation protocol); the best epoch's weights are kept. For stage "test"
of a temporal split the served model must also have seen the most recent week
(`refit_on_test_history`): by default (`refit_warm_start`) the early-stopped model, with
the Adam moments of its epoch, is continued for one pass over the valid window's targets
(their histories reach back into the train window; listings, sellers and brands first
seen in the valid window get rows of their own, bucket edges stay the fit's). That is
what a from-scratch refit on train + valid for the chosen epochs would teach it about the
new week, at a fraction of the cost (on the synthetic marketplace the served model's test
recall@100 is as good or better; more passes over one week overfit it); with
`refit_warm_start: false` the refit is from scratch. A fixed split's test-stage history is
the train file, so the early-stopped model is the result.

Speed (CPU, 2 threads): the optimiser is Adam's fused kernel; the item tower runs once
per distinct (listing, age bucket) of a batch, and on the content path once per batch when
no listing has content features (fixed splits); the early-stopping monitor featurizes the
valid window's listings and histories once per fit and only reruns the towers.

Stage "valid" is the tuning mode: its valid-window metrics chose the epoch, so they are
optimistic by construction.

Example
-------
>>> trained = train_two_tower(split, config.model.two_tower, "test")  # doctest: +SKIP
>>> scorer = TwoTowerScorer(trained, split.tables.items, split.history("test"),
...                         split.test_cutoff)  # doctest: +SKIP
>>> evaluate_scorer(scorer, build_evaluation_task(split, "test", config.evaluation), (100,))
... # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional

from components.config import EvaluationConfig, TwoTowerConfig
from components.data.split import DataSplit, Stage
from components.evaluation.protocol import (
    EvaluationTask,
    build_evaluation_task,
    evaluate_scorer,
)
from components.retrieval.collaborative import history_before
from components.retrieval.item_features import (
    ATTRIBUTE_COLUMNS,
    NO_DATE,
    UNKNOWN,
    ItemArrays,
    ItemFeaturizer,
    timestamp_us,
)
from components.store import read_json, write_json

logger = logging.getLogger(__name__)

#: Score of an item the scorer has no attributes for: below every cosine.
UNKNOWN_ITEM_SCORE = -2.0
#: Activity buckets of the user tower: floor(log2(1 + interactions before as_of)), capped.
N_ACTIVITY_BUCKETS = 16
#: Rows per forward pass when embedding a catalogue or a user list.
INFERENCE_BATCH = 8192
WEIGHTS_FILE = "two_tower.pt"
META_FILE = "two_tower.json"
ITEM_IDS_FILE = "item_ids.parquet"
USER_IDS_FILE = "user_ids.parquet"
ITEM_TABLE_FILE = "items.parquet"
_US_PER_SECOND = 1_000_000


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
            self.item_id = nn.Embedding(n_item_ids + 1, config.embedding_dim, padding_idx=UNKNOWN)
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
            self.user_id = nn.Embedding(n_user_ids + 1, dim, padding_idx=UNKNOWN)
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
class _History:
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
    ) -> _History:
        has_time = bool(frame["ts"].notna().any()) if len(frame) else False
        user_codes, users = pd.factorize(frame["user_id"].astype("object"), sort=True)
        if has_time:
            ts_us = _epoch_us(frame["ts"])
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


def _ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated positions of [starts[i], ends[i]) and the n + 1 bag boundaries."""
    lengths = np.maximum(ends - starts, 0)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return positions.astype(np.int64), offsets


def _unique_inverse(keys: np.ndarray, n_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(keys, return_inverse=True) for keys in [0, n_keys), in linear time."""
    present = np.zeros(n_keys, dtype=bool)
    present[keys] = True
    unique = np.flatnonzero(present)
    position = np.zeros(n_keys, dtype=np.int64)
    position[unique] = np.arange(len(unique))
    return unique, position[keys]


def _half_life_seconds(config: TwoTowerConfig) -> float | None:
    if config.recency_half_life is None:
        return None
    return pd.Timedelta(config.recency_half_life).total_seconds()


# =========================================================================== the fitted model


@dataclass(eq=False)
class TrainedTwoTower:
    """A fitted two-tower encoder: the towers, the vocabularies and what serving needs."""

    model: TwoTowerModel
    featurizer: ItemFeaturizer
    #: Attributes of the listings seen in training, to embed the items of user histories.
    item_table: pd.DataFrame
    #: Users with an id embedding (index = position + 1); empty without `use_user_id`.
    user_ids: tuple[str, ...]
    config: TwoTowerConfig
    #: The fit's cut-off (None without timestamps).
    as_of: pd.Timestamp | None
    #: Per-epoch records: phase, epoch, loss, valid recall, seconds (for MLflow).
    epochs: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ items

    def embed_items(self, items: pd.DataFrame, as_of: pd.Timestamp | None) -> np.ndarray:
        """(len(items), embedding_dim) float32 L2-normalised vectors of listings at `as_of`
        (age buckets at `as_of`; unknown ids and new listings: from content alone)."""
        arrays = self.featurizer.transform(items)
        age = self.featurizer.age_buckets(arrays.created_us, timestamp_us(as_of))
        return self._item_vectors(arrays, age).numpy()

    def _item_vectors(self, arrays: ItemArrays, age: np.ndarray) -> torch.Tensor:
        self.model.eval()
        parts = []
        with torch.no_grad():
            for start in range(0, len(arrays), INFERENCE_BATCH):
                rows = np.arange(start, min(start + INFERENCE_BATCH, len(arrays)))
                batch = ItemBatch.from_arrays(arrays.take(rows), age[rows])
                parts.append(self.model.item_tower(batch))
        if not parts:
            return torch.zeros((0, self.config.embedding_dim))
        return torch.cat(parts)

    # ------------------------------------------------------------------ users

    def user_encoder(
        self,
        history: pd.DataFrame,
        as_of: pd.Timestamp | None,
        items: pd.DataFrame | None = None,
    ) -> UserEncoder:
        """Prepare `history` (strictly before `as_of`) once to encode many users quickly.

        `items` gives the attributes of history listings the model did not see in training
        (the training listings' attributes are kept in the model)."""
        frame, as_of = history_before(history, as_of)
        table = self.item_table
        if items is not None:
            columns = [c for c in ATTRIBUTE_COLUMNS if c in items]
            table = pd.concat([items[columns], table], ignore_index=True)
            table = table.drop_duplicates("item_id", keep="first")
        history_ids = pd.Index(frame["item_id"].astype("object").unique())
        known = table[table["item_id"].astype("object").isin(history_ids)]
        missing = history_ids.difference(pd.Index(known["item_id"].astype("object")))
        catalogue = pd.concat(
            [known, pd.DataFrame({"item_id": pd.Series(missing, dtype="object")})],
            ignore_index=True,
        )
        catalogue_index = pd.Index(catalogue["item_id"].astype("object"))
        arrays = self.featurizer.transform(catalogue)
        # History listings are pooled without an age (as in training).
        vectors = self._item_vectors(arrays, np.zeros(len(arrays), dtype=np.int64))
        index = _History.build(frame, catalogue_index, self.config)
        encoder = UserEncoder(self, index, vectors, timestamp_us(as_of))
        encoder.prepared = (arrays, index)
        return encoder

    def embed_users(
        self,
        user_ids: Sequence[str],
        history: pd.DataFrame,
        as_of: pd.Timestamp | None,
        items: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """(len(user_ids), embedding_dim) float32 L2-normalised user vectors from each
        user's last `history_length` interactions strictly before `as_of`."""
        return self.user_encoder(history, as_of, items).encode(user_ids)

    # ------------------------------------------------------------------ persistence

    def save(self, folder: Path | str) -> None:
        """state_dict (torch.save, no pickled modules) + vocabularies and config (JSON)
        + id lists and the training listings' attributes (parquet)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), folder / WEIGHTS_FILE)
        pd.DataFrame({"item_id": list(self.featurizer.item_ids)}, dtype="string").to_parquet(
            folder / ITEM_IDS_FILE, index=False
        )
        pd.DataFrame({"user_id": list(self.user_ids)}, dtype="string").to_parquet(
            folder / USER_IDS_FILE, index=False
        )
        self.item_table.to_parquet(folder / ITEM_TABLE_FILE, index=False)
        write_json(
            folder / META_FILE,
            {
                "config": self.config.model_dump(mode="json"),
                "featurizer": self.featurizer.to_json(),
                "as_of": None if self.as_of is None else self.as_of.isoformat(),
                "epochs": self.epochs,
            },
        )

    @classmethod
    def load(cls, folder: Path | str) -> TrainedTwoTower:
        folder = Path(folder)
        meta = read_json(folder / META_FILE)
        config = TwoTowerConfig.model_validate(meta["config"])
        item_ids = pd.read_parquet(folder / ITEM_IDS_FILE)["item_id"].astype(str).tolist()
        user_ids = tuple(pd.read_parquet(folder / USER_IDS_FILE)["user_id"].astype(str))
        featurizer = ItemFeaturizer.from_json(meta["featurizer"], item_ids)
        model = TwoTowerModel(featurizer, len(user_ids), config)
        state = torch.load(folder / WEIGHTS_FILE, weights_only=True)
        model.load_state_dict(state)
        model.eval()
        return cls(
            model=model,
            featurizer=featurizer,
            item_table=_attribute_table(pd.read_parquet(folder / ITEM_TABLE_FILE)),
            user_ids=user_ids,
            config=config,
            as_of=None if meta["as_of"] is None else pd.Timestamp(meta["as_of"]),
            epochs=list(meta["epochs"]),
        )


@dataclass(eq=False)
class UserEncoder:
    """A user history prepared once (`TrainedTwoTower.user_encoder`); encodes user lists."""

    trained: TrainedTwoTower
    index: _History
    #: Item-tower vectors of the history's listings (rows of index.item_rows).
    item_vectors: torch.Tensor
    as_of_us: int | None
    #: The history listings' features (rows of `item_vectors`) and the index, when built by
    #: `TrainedTwoTower.user_encoder` (the early-stopping monitor reuses them every epoch).
    prepared: tuple[ItemArrays, _History] | None = field(default=None, repr=False)

    def encode(self, user_ids: Sequence[str]) -> np.ndarray:
        wanted = np.asarray(user_ids, dtype=object)
        parts = []
        with torch.no_grad():
            self.trained.model.eval()
            for start in range(0, len(wanted), INFERENCE_BATCH):
                bags = self._bags(wanted[start : start + INFERENCE_BATCH])
                parts.append(self.trained.model.user_tower(self.item_vectors, bags))
        if not parts:
            return np.zeros((0, self.trained.config.embedding_dim), dtype=np.float32)
        return torch.cat(parts).numpy()

    def _bags(self, user_ids: np.ndarray) -> HistoryBatch:
        config = self.trained.config
        codes = self.index.users.get_indexer(pd.Index(user_ids))
        known = codes >= 0
        user_starts = np.zeros(len(codes), dtype=np.int64)
        ends = np.zeros(len(codes), dtype=np.int64)
        user_starts[known] = self.index.user_start[codes[known]]
        ends[known] = self.index.user_start[codes[known] + 1]
        starts = np.maximum(user_starts, ends - config.history_length)
        positions, offsets = _ranges(starts, ends)
        age = None
        if self.index.ts_us is not None and self.as_of_us is not None:
            query = np.repeat(np.full(len(user_ids), self.as_of_us), np.diff(offsets))
            age = (query - self.index.ts_us[positions]) / _US_PER_SECOND
        weights = pooling_weights(
            self.index.event_weights[positions], age, _half_life_seconds(config), offsets
        )
        user_index = pd.Index(self.trained.user_ids).get_indexer(pd.Index(user_ids)) + 1
        return HistoryBatch(
            items=torch.from_numpy(self.index.item_rows[positions]),
            offsets=torch.from_numpy(offsets[:-1]),
            weights=torch.from_numpy(weights),
            activity=torch.from_numpy(activity_buckets(ends - user_starts)),
            user_ids=torch.from_numpy(user_index.astype(np.int64)),
        )


# =========================================================================== the scorer


class TwoTowerScorer:
    """`Scorer` over a catalogue at `as_of`: cosine of user and item vectors.

    Item vectors of `items` are computed once (ages at `as_of`); user vectors are computed
    in batches on first request, from `history` strictly before `as_of`, and cached. Items
    outside `items` score UNKNOWN_ITEM_SCORE (below every cosine).
    """

    def __init__(
        self,
        model: TrainedTwoTower,
        items: pd.DataFrame,
        history: pd.DataFrame,
        as_of: pd.Timestamp | None,
    ) -> None:
        self.model = model
        self.as_of = as_of
        self.item_index = pd.Index(items["item_id"].astype("object"))
        self._item_vectors = model.embed_items(items, as_of)
        self._encoder = model.user_encoder(history, as_of, items)
        self._user_rows: dict[str, int] = {}
        self._user_vectors = np.zeros((0, model.config.embedding_dim), dtype=np.float32)
        self._aligned_source: Sequence[str] | None = None
        self._aligned: tuple[np.ndarray, np.ndarray] = (
            np.zeros((0, 0), np.float32),
            np.zeros(0, bool),
        )

    @classmethod
    def _of(
        cls,
        model: TrainedTwoTower,
        item_index: pd.Index,
        item_vectors: np.ndarray,
        encoder: UserEncoder,
        as_of: pd.Timestamp | None,
    ) -> TwoTowerScorer:
        """The scorer __init__ builds, from parts computed already (the monitor's)."""
        scorer = cls.__new__(cls)
        scorer.model = model
        scorer.as_of = as_of
        scorer.item_index = item_index
        scorer._item_vectors = item_vectors
        scorer._encoder = encoder
        scorer._user_rows = {}
        scorer._user_vectors = np.zeros((0, model.config.embedding_dim), dtype=np.float32)
        scorer._aligned_source = None
        scorer._aligned = (np.zeros((0, 0), np.float32), np.zeros(0, bool))
        return scorer

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n, d) float32 unit vectors of catalogue items; KeyError for unknown ids."""
        rows = self.item_index.get_indexer(pd.Index(np.asarray(item_ids, dtype=object)))
        if (rows < 0).any():
            missing = list(np.asarray(item_ids, dtype=object)[rows < 0][:5])
            raise KeyError(f"items {missing} are not in the scorer's catalogue")
        return self._item_vectors[rows]

    def user_vectors(self, user_ids: Sequence[str]) -> np.ndarray:
        """(n, d) float32 unit vectors (users with no history: the cold-user vector)."""
        wanted = [str(user) for user in user_ids]
        new = list(dict.fromkeys(user for user in wanted if user not in self._user_rows))
        if new:
            encoded = self._encoder.encode(new)
            base = len(self._user_vectors)
            self._user_vectors = np.concatenate([self._user_vectors, encoded])
            for offset, user in enumerate(new):
                self._user_rows[user] = base + offset
        return self._user_vectors[[self._user_rows[user] for user in wanted]]

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(len(user_ids), len(item_ids)) float32 cosines."""
        users = self.user_vectors(user_ids)
        items, known = self._aligned_items(item_ids)
        scores = users @ items.T
        if not known.all():
            scores[:, ~known] = UNKNOWN_ITEM_SCORE
        return scores.astype(np.float32, copy=False)

    def _aligned_items(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue vectors in the order of `item_ids` (reused while the same object is
        passed again, as `rank_items` does for every batch of users)."""
        if item_ids is not self._aligned_source:
            rows = self.item_index.get_indexer(pd.Index(np.asarray(item_ids, dtype=object)))
            known = rows >= 0
            aligned = np.zeros((len(rows), self._item_vectors.shape[1]), dtype=np.float32)
            aligned[known] = self._item_vectors[rows[known]]
            self._aligned = (aligned, known)
            self._aligned_source = item_ids
        return self._aligned


# =========================================================================== training data


@dataclass(frozen=True)
class _TrainingData:
    """Everything the training loop samples from, as numpy arrays."""

    index: _History
    featurizer: ItemFeaturizer
    #: Static features of every catalogue row (the items table + unknown history items).
    catalogue: ItemArrays
    #: Positions (into index rows) of the training targets.
    targets: np.ndarray
    #: Per index row: end (exclusive) of its history, the user's rows strictly before it.
    history_end: np.ndarray
    #: Catalogue rows sorted by creation time, with creation and sale times (negatives).
    by_creation: np.ndarray
    created_sorted: np.ndarray
    sold_us: np.ndarray
    sold_sorted: np.ndarray
    timed: bool
    #: Whether any listing has a content feature (False: every row's content is the same).
    has_content: bool


def _build_training_data(
    frame: pd.DataFrame,
    catalogue_items: pd.DataFrame,
    featurizer: ItemFeaturizer,
    config: TwoTowerConfig,
) -> _TrainingData:
    catalogue_index = pd.Index(catalogue_items["item_id"].astype("object"))
    index = _History.build(frame, catalogue_index, config)
    catalogue = featurizer.transform(catalogue_items)
    if index.ts_us is not None:
        # Targets: the first interaction of each (user, item) pair; its history ends at the
        # first row of the user's run of rows with the same timestamp (strictly before).
        pair = pd.DataFrame({"user": index.user_codes, "item": index.item_rows})
        targets = np.flatnonzero(~pair.duplicated().to_numpy())
        positions = np.arange(len(index))
        new_run = np.ones(len(index), dtype=bool)
        new_run[1:] = (index.user_codes[1:] != index.user_codes[:-1]) | (
            index.ts_us[1:] != index.ts_us[:-1]
        )
        history_end = np.maximum.accumulate(np.where(new_run, positions, 0))
    else:
        targets = np.arange(len(index))
        history_end = np.full(len(index), -1)  # sampled per batch (leave-one-out)
    created = catalogue.created_us
    by_creation = np.argsort(created, kind="stable")
    sold_us = np.full(len(catalogue_items), np.iinfo(np.int64).max, dtype=np.int64)
    if "sold_at" in catalogue_items:
        sold = pd.to_datetime(catalogue_items["sold_at"], utc=True)
        known = sold.notna().to_numpy()
        sold_us[known] = _epoch_us(sold[known])
    return _TrainingData(
        index=index,
        featurizer=featurizer,
        catalogue=catalogue,
        targets=targets,
        history_end=history_end,
        by_creation=by_creation,
        created_sorted=created[by_creation],
        sold_us=sold_us,
        sold_sorted=np.sort(sold_us),
        timed=index.ts_us is not None,
        has_content=_has_content(catalogue),
    )


def _training_bags(
    data: _TrainingData,
    batch: np.ndarray,
    config: TwoTowerConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """History bags of a batch of targets: catalogue rows, boundaries, weights, counts."""
    index = data.index
    users = index.user_codes[batch]
    user_starts = index.user_start[users]
    if data.timed:
        ends = data.history_end[batch]
        starts = np.maximum(user_starts, ends - config.history_length)
        positions, offsets = _ranges(starts, ends)
        query = np.repeat(index.ts_us[batch], np.diff(offsets))
        age = (query - index.ts_us[positions]) / _US_PER_SECOND
        counts = ends - user_starts
    else:
        # Leave-one-out: a fresh sample of the user's other items (all of them if few).
        others = index.user_start[users + 1] - user_starts - 1
        lengths = np.minimum(others, config.history_length)
        offsets = np.zeros(len(batch) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        owner = np.repeat(np.arange(len(batch)), lengths)
        sampled = others[owner] > config.history_length
        draws = np.arange(offsets[-1]) - offsets[:-1][owner]  # 0..length-1: take them all
        draws[sampled] = rng.integers(0, others[owner][sampled])
        self_offset = (batch - user_starts)[owner]
        draws = draws + (draws >= self_offset)
        positions = user_starts[owner] + draws
        age = None
        counts = others
    weights = pooling_weights(
        index.event_weights[positions], age, _half_life_seconds(config), offsets
    )
    return index.item_rows[positions], offsets, weights, counts


def _extra_negatives(
    data: _TrainingData, times: np.ndarray | None, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` catalogue rows drawn uniformly among the listings available at a random
    batch example's time; their query times and the number of listings available then."""
    n = len(data.by_creation)
    if times is None:
        return rng.integers(0, n, count), np.full(count, NO_DATE), np.full(count, float(n))
    at = times[rng.integers(0, len(times), count)]
    n_created = np.searchsorted(data.created_sorted, at, side="right")
    n_sold = np.searchsorted(data.sold_sorted, at, side="right")
    available = np.maximum(n_created - n_sold, 1).astype(float)
    rows = data.by_creation[(rng.random(count) * np.maximum(n_created, 1)).astype(np.int64)]
    for _ in range(4):  # redraw listings already sold at that time (rejection sampling)
        sold = data.sold_us[rows] <= at
        if not sold.any():
            break
        redraw = data.by_creation[
            (rng.random(int(sold.sum())) * np.maximum(n_created[sold], 1)).astype(np.int64)
        ]
        rows[sold] = redraw
    return rows, at, available


# =========================================================================== training


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Deterministic torch kernels and a seeded, isolated torch RNG for the block."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _catalogue_items(items: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The items table plus a null-attribute row for each interacted id it lacks."""
    known = pd.Index(items["item_id"].astype("object"))
    missing = pd.Index(frame["item_id"].astype("object").unique()).difference(known)
    if len(missing) == 0:
        return items.reset_index(drop=True)
    extra = pd.DataFrame({"item_id": pd.Series(missing, dtype=items["item_id"].dtype)})
    return pd.concat([items, extra], ignore_index=True)


def _attribute_table(items: pd.DataFrame) -> pd.DataFrame:
    columns = [column for column in ATTRIBUTE_COLUMNS if column in items]
    return items[columns].reset_index(drop=True)


@dataclass
class _Monitor:
    """Early stopping on the valid window: exact recall@K of the model as it trains."""

    task: EvaluationTask
    items: pd.DataFrame
    history: pd.DataFrame
    as_of: pd.Timestamp | None
    k: int

    #: What does not change between the epochs of one fit (same featurizer): the items'
    #: features and ages, the history's listings' features and its index.
    _prepared: tuple[Any, ...] | None = field(default=None, init=False, repr=False)

    def recall(self, trained: TrainedTwoTower) -> float:
        """Exact recall@k of `trained` as TwoTowerScorer(trained, items, history, as_of)
        scores it; the inputs are featurized once per fit and only the towers rerun."""
        if self._prepared is None or self._prepared[0] is not trained.featurizer:
            featurizer = trained.featurizer
            arrays = featurizer.transform(self.items)
            age = featurizer.age_buckets(arrays.created_us, timestamp_us(self.as_of))
            encoder = trained.user_encoder(self.history, self.as_of, self.items)
            history_arrays, index = encoder.prepared
            self._prepared = (featurizer, arrays, age, history_arrays, index)
        _, arrays, age, history_arrays, index = self._prepared
        history_vectors = trained._item_vectors(
            history_arrays, np.zeros(len(history_arrays), dtype=np.int64)
        )
        scorer = TwoTowerScorer._of(
            trained,
            pd.Index(self.items["item_id"].astype("object")),
            trained._item_vectors(arrays, age).numpy(),
            UserEncoder(trained, index, history_vectors, timestamp_us(self.as_of)),
            self.as_of,
        )
        result = evaluate_scorer(scorer, self.task, (self.k,))
        return result.metrics[f"recall@{self.k}"]


def _sampled_users(task: EvaluationTask, n_users: int, seed: int) -> EvaluationTask:
    """At most `n_users` of `task`'s users, a seeded sample (the early-stopping check ranks
    every item for each of them: on a large catalogue the full window costs seconds)."""
    if task.n_users <= n_users:
        return task
    keep = np.sort(np.random.default_rng(seed).choice(task.n_users, n_users, replace=False))
    return replace(
        task,
        user_ids=task.user_ids[keep],
        relevant=sp.csr_matrix(task.relevant[keep]),
        excluded=sp.csr_matrix(task.excluded[keep]),
    )


@dataclass(frozen=True)
class _WarmStart:
    """Where a warm-started refit continues from: the early-stopped model, the optimiser
    state of its epoch, and the cut-off of the data it was fitted on (targets at or after
    it are the ones it has not seen)."""

    trained: TrainedTwoTower
    optimiser_state: dict[str, Any]
    since_us: int | None


def _adam(model: nn.Module, config: TwoTowerConfig) -> torch.optim.Optimizer:
    """Adam; the fused CPU kernel (one pass over every parameter, same update rule) is
    several times faster than the per-tensor loop on the 2.5M-parameter tables."""
    return torch.optim.Adam(
        model.parameters(),
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=True,
    )


def _fit(
    history: pd.DataFrame,
    items: pd.DataFrame,
    as_of: pd.Timestamp | None,
    config: TwoTowerConfig,
    *,
    max_epochs: int,
    deadline: float,
    monitor: _Monitor | None,
    phase: str,
    warm: _WarmStart | None = None,
) -> tuple[TrainedTwoTower, int, dict[str, Any]]:
    """Fit on `history` strictly before `as_of`; returns the model (best epoch's weights
    when monitored), the number of epochs that model was trained for and the optimiser
    state at that epoch. `warm`: continue that model (vocabularies extended with the new
    values, bucket edges kept) on the targets at or after `warm.since_us` only."""
    frame, as_of = history_before(history, as_of)
    if frame.empty:
        raise ValueError(
            f"two-tower {phase}: no interaction before {as_of} to learn from; "
            "check the split's cut-offs"
        )
    catalogue_items = _catalogue_items(items, frame)
    seen = catalogue_items[catalogue_items["item_id"].isin(frame["item_id"].unique())]
    featurizer = ItemFeaturizer.fit(
        seen,
        price_buckets=config.price_buckets,
        age_buckets=config.age_buckets,
        text_buckets=config.text_buckets,
    )
    if warm is not None:
        featurizer = _extended_featurizer(warm.trained.featurizer, featurizer)
    data = _build_training_data(frame, catalogue_items, featurizer, config)
    if warm is not None and warm.since_us is not None and data.timed:
        targets = data.targets[data.index.ts_us[data.targets] >= warm.since_us]
        data = replace(data, targets=targets)
    user_ids = tuple(data.index.users.astype(str)) if config.use_user_id else ()
    rng = np.random.default_rng(config.seed)
    id_dropout = config.item_id_dropout if data.has_content else 0.0
    if id_dropout != config.item_id_dropout:
        logger.info("two-tower: listings have no content features; item-id dropout off")

    model = TwoTowerModel(featurizer, len(user_ids), config)
    optimiser = _adam(model, config)
    if warm is not None:
        _load_warm_start(model, optimiser, warm, featurizer, user_ids)
    trained = TrainedTwoTower(
        model=model,
        featurizer=featurizer,
        item_table=_attribute_table(seen),
        user_ids=user_ids,
        config=config,
        as_of=as_of,
    )
    best_recall, best_epoch, best_state, stale = -1.0, 0, None, 0
    best_optimiser: dict[str, Any] = {}
    epochs_done = 0
    for epoch in range(1, max_epochs + 1):
        started = time.monotonic()
        loss, finished = _train_epoch(model, optimiser, data, config, id_dropout, rng, deadline)
        epochs_done = epoch
        record: dict[str, Any] = {
            "phase": phase,
            "epoch": epoch,
            "loss": loss,
            "complete": finished,
            "examples": len(data.targets),
        }
        record["train_s"] = round(time.monotonic() - started, 2)
        if monitor is not None:
            recall = monitor.recall(trained)
            record[f"valid_recall@{monitor.k}"] = recall
            if recall > best_recall:
                best_recall, best_epoch, stale = recall, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                best_optimiser = copy.deepcopy(optimiser.state_dict())
            else:
                stale += 1
        record["total_s"] = round(time.monotonic() - started, 2)
        trained.epochs.append(record)
        logger.info("two-tower %s epoch %d: %s", phase, epoch, record)
        if not finished or time.monotonic() > deadline:
            logger.warning("two-tower %s: max_training_seconds reached at epoch %d", phase, epoch)
            break
        if monitor is not None and stale >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        return trained, best_epoch, best_optimiser
    return trained, epochs_done, optimiser.state_dict()


def _extended_featurizer(fitted: ItemFeaturizer, new: ItemFeaturizer) -> ItemFeaturizer:
    """`fitted`'s bucket edges (what its weights learned) with the vocabularies and ids of
    both: the values `new` saw and `fitted` did not get rows of their own."""

    def union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(first) | set(second)))

    return ItemFeaturizer(
        vocabularies={
            column: union(values, new.vocabularies[column])
            for column, values in fitted.vocabularies.items()
        },
        item_ids=union(fitted.item_ids, new.item_ids),
        price_edges=fitted.price_edges,
        age_edges=fitted.age_edges,
        text_buckets=fitted.text_buckets,
    )


def _row_map(old: Sequence[str], new: Sequence[str], offsets: tuple[int, int] = (0, 0)):
    """(rows in the new table, rows in the old table) of the values both have, UNKNOWN
    (row 0) included; `offsets`: where the two vocabularies start in their tables."""
    positions = pd.Index(list(new), dtype="object").get_indexer(pd.Index(list(old), dtype="object"))
    keep = positions >= 0
    new_rows = np.concatenate([[0], positions[keep] + 1]) + offsets[0]
    old_rows = np.concatenate([[0], np.flatnonzero(keep) + 1]) + offsets[1]
    return torch.from_numpy(new_rows.astype(np.int64)), torch.from_numpy(old_rows.astype(np.int64))


def _load_warm_start(
    model: TwoTowerModel,
    optimiser: torch.optim.Optimizer,
    warm: _WarmStart,
    featurizer: ItemFeaturizer,
    user_ids: tuple[str, ...],
) -> None:
    """Copy the warm start's weights and Adam moments into `model` (built on the extended
    `featurizer`): id and attribute rows by value; new values keep their fresh initial
    weights and zero moments."""
    old = warm.trained
    maps = {}
    new_offsets = model.item_tower.categorical_offsets.tolist()
    old_offsets = old.model.item_tower.categorical_offsets.tolist()
    parts = [
        _row_map(
            old.featurizer.vocabularies[column],
            featurizer.vocabularies[column],
            (new_offsets[position], old_offsets[position]),
        )
        for position, column in enumerate(featurizer.vocabularies)
    ]
    maps["item_tower.categorical.weight"] = (
        torch.cat([new for new, _ in parts]),
        torch.cat([old for _, old in parts]),
    )
    maps["item_tower.item_id.weight"] = _row_map(old.featurizer.item_ids, featurizer.item_ids)
    maps["user_tower.user_id.weight"] = _row_map(old.user_ids, user_ids)

    def moved(name: str, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if name not in maps:
            return source.clone()
        new_rows, old_rows = maps[name]
        result = target.clone()
        result[new_rows] = source[old_rows]
        return result

    state = model.state_dict()
    model.load_state_dict(
        {name: moved(name, value, state[name]) for name, value in old.model.state_dict().items()}
    )
    names = [name for name, _ in model.named_parameters()]
    parameters = dict(model.named_parameters())
    moments = copy.deepcopy(warm.optimiser_state)
    for position, values in moments["state"].items():
        name = names[position]
        for key in ("exp_avg", "exp_avg_sq"):
            zeros = torch.zeros_like(parameters[name].detach())
            values[key] = moved(name, values[key], zeros)
    optimiser.load_state_dict(moments)


def _has_content(catalogue: ItemArrays) -> bool:
    return bool(
        (catalogue.categorical != UNKNOWN).any()
        or (catalogue.price != UNKNOWN).any()
        or len(catalogue.text)
        or (catalogue.created_us != NO_DATE).any()
    )


@dataclass(frozen=True)
class _Shares:
    """Share of each catalogue row among the targets a batch was drawn from."""

    rows: np.ndarray  # sorted
    shares: np.ndarray

    @classmethod
    def of(cls, item_rows: np.ndarray) -> _Shares:
        rows, counts = np.unique(item_rows, return_counts=True)
        return cls(rows, counts / max(len(item_rows), 1))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if len(self.rows) == 0:
            return np.zeros(len(rows))
        position = np.searchsorted(self.rows, rows).clip(max=len(self.rows) - 1)
        return np.where(self.rows[position] == rows, self.shares[position], 0.0)


def _epoch_batches(
    data: _TrainingData, config: TwoTowerConfig, rng: np.random.Generator
) -> list[tuple[np.ndarray, _Shares]]:
    """The epoch's batches of targets, each with the item shares of the pool it was drawn
    from (what the log-Q correction needs), in a seeded random order.

    Timed data with a `batch_window`: targets are grouped into windows of that length (the
    boundaries shifted at random each epoch) and each batch is a random part of one window,
    so its negatives are listings live at about the same time and their sampling
    probability is their popularity in that window. Otherwise: one pool, random batches.
    """
    targets = data.targets
    if not data.timed or config.batch_window is None:
        pools = [rng.permutation(targets)]
    else:
        window = pd.Timedelta(config.batch_window) // pd.Timedelta(microseconds=1)
        ts = data.index.ts_us[targets]
        pool = (ts - ts.min() + int(rng.integers(0, window))) // window
        order = np.lexsort((rng.random(len(targets)), pool))
        bounds = np.flatnonzero(np.diff(pool[order])) + 1
        pools = np.split(targets[order], bounds)
    batches = []
    for members in pools:
        shares = _Shares.of(data.index.item_rows[members])
        n_batches = -(-len(members) // config.batch_size)
        batches += [(batch, shares) for batch in np.array_split(members, n_batches)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _train_epoch(
    model: TwoTowerModel,
    optimiser: torch.optim.Optimizer,
    data: _TrainingData,
    config: TwoTowerConfig,
    id_dropout: float,
    rng: np.random.Generator,
    deadline: float,
) -> tuple[float, bool]:
    """One pass over the targets in seeded random batches; (mean loss, finished)."""
    model.train()
    total, batches = 0.0, 0
    for batch, shares in _epoch_batches(data, config, rng):
        if time.monotonic() > deadline:
            return total / max(batches, 1), False
        if len(batch) < 2:
            continue
        loss = _batch_loss(model, data, batch, shares, config, id_dropout, rng)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += float(loss.detach())
        batches += 1
    return total / max(batches, 1), True


def _batch_loss(
    model: TwoTowerModel,
    data: _TrainingData,
    batch: np.ndarray,
    shares: _Shares,
    config: TwoTowerConfig,
    id_dropout: float,
    rng: np.random.Generator,
) -> torch.Tensor:
    index = data.index
    target_rows = index.item_rows[batch]
    times = index.ts_us[batch] if data.timed else None
    # Extra uniform negatives (mixed negative sampling), available at a batch example's time.
    negative_rows, negative_times, available = _extra_negatives(
        data, times, config.extra_negatives, rng
    )
    bag_rows, offsets, weights, counts = _training_bags(data, batch, config, rng)

    # One tower pass over the distinct (listing, age bucket) pairs of the batch: targets and
    # negatives at their query times, history listings without age (as at inference).
    n_candidates = len(batch) + len(negative_rows)
    rows = np.concatenate([target_rows, negative_rows, bag_rows])
    query_times = np.concatenate(
        [
            times if times is not None else np.full(len(batch), NO_DATE),
            negative_times,
            np.full(len(bag_rows), NO_DATE),
        ]
    )
    age = data.featurizer.age_buckets(data.catalogue.created_us[rows], query_times)
    n_keys = len(data.catalogue) * data.featurizer.n_age_buckets
    keys, inverse = _unique_inverse(rows * data.featurizer.n_age_buckets + age, n_keys)
    unique_rows = keys // data.featurizer.n_age_buckets
    arrays = data.catalogue.take(unique_rows)
    ids = arrays.ids.copy()
    if id_dropout > 0:
        ids[rng.random(len(ids)) < id_dropout] = UNKNOWN
    vectors = model.item_tower(
        ItemBatch.from_arrays(arrays, keys % data.featurizer.n_age_buckets, ids),
        same_content=not data.has_content,
    )
    candidates = vectors[torch.from_numpy(inverse[:n_candidates])]

    user_index = np.zeros(len(batch), dtype=np.int64)
    if model.user_tower.user_id is not None:
        user_index = index.user_codes[batch] + 1
    bags = HistoryBatch(
        items=torch.from_numpy(inverse[n_candidates:].astype(np.int64)),
        offsets=torch.from_numpy(offsets[:-1]),
        weights=torch.from_numpy(weights),
        activity=torch.from_numpy(activity_buckets(counts)),
        user_ids=torch.from_numpy(user_index),
    )
    users = model.user_tower(vectors, bags)

    candidate_rows = np.concatenate([target_rows, negative_rows])
    if config.logq_correction:
        expected = len(batch) * shares(candidate_rows)
        uniform = np.zeros(n_candidates)
        if config.extra_negatives:
            mean_available = float(available.mean())
            uniform[:] = config.extra_negatives / mean_available
        log_q = np.log(expected + uniform + 1e-12)
    else:
        log_q = np.zeros(n_candidates)
    same = target_rows[:, None] == candidate_rows[None, :]
    np.fill_diagonal(same[:, : len(batch)], False)
    return sampled_softmax_loss(
        users,
        candidates,
        torch.from_numpy(log_q.astype(np.float32)),
        config.temperature,
        torch.from_numpy(same),
    )


def train_two_tower(
    split: DataSplit,
    config: TwoTowerConfig,
    stage: Literal["valid", "test"] = "test",
    evaluation: EvaluationConfig | None = None,
) -> TrainedTwoTower:
    """Train the two-tower encoder for evaluation at `stage` (see `train_two_tower_stages`)."""
    return train_two_tower_stages(split, config, stage, evaluation)[1]


def train_two_tower_stages(
    split: DataSplit,
    config: TwoTowerConfig,
    stage: Literal["valid", "test"] = "test",
    evaluation: EvaluationConfig | None = None,
) -> tuple[TrainedTwoTower, TrainedTwoTower]:
    """(fitted on the train window, the model for `stage`); see the module docstring.

    The first never saw the valid window: the ranker's label-stage features use it.

    Fits on `split.history("valid")`, early-stopped on the valid window's exact recall@K
    (masking as `evaluation`; default: the protocol's defaults, every seen item masked for
    a fixed split). Stage "test" of a temporal split then refits on `split.history("test")`
    for the chosen epochs (`config.refit_on_test_history`), unless what is left of
    `max_training_seconds` (which bounds both phases) cannot fit it: then the early-stopped
    model is returned. Deterministic on CPU for a given seed, data and thread count.
    """
    if evaluation is None:
        evaluation = EvaluationConfig(mask_all_seen=split.protocol == "fixed")
    deadline = time.monotonic() + config.max_training_seconds
    monitor = None
    if len(split.valid):
        monitor = _Monitor(
            task=_sampled_users(
                build_evaluation_task(split, "valid", evaluation),
                config.early_stopping_users,
                config.seed,
            ),
            items=split.tables.items,
            history=split.history("valid"),
            as_of=split.cutoff("valid"),
            k=config.early_stopping_k,
        )
    with _deterministic(config.seed):
        trained, epochs, optimiser_state = _fit(
            split.history("valid"),
            split.tables.items,
            split.cutoff("valid"),
            config,
            max_epochs=config.max_epochs,
            deadline=deadline,
            monitor=monitor,
            phase="fit",
        )
        refit = stage == "test" and split.protocol == "temporal" and config.refit_on_test_history
        if not refit:
            return trained, trained
        # The refit sees more data than the fit (or, warm-started, only the new part of
        # it): scale the fit's epoch times to estimate it.
        fit_rows = max(len(split.history("valid")), 1)
        refit_rows = len(split.history("test"))
        passes = epochs
        if config.refit_warm_start:
            refit_rows, passes = refit_rows - fit_rows, 1
        growth = refit_rows / fit_rows
        needed = growth * passes * statistics.mean(r["train_s"] for r in trained.epochs)
        if time.monotonic() + needed > deadline:
            logger.warning(
                "two-tower: %.0f s left of max_training_seconds, a refit needs about %.0f s; "
                "keeping the model fitted on the train window",
                deadline - time.monotonic(),
                needed,
            )
            return trained, trained
        warm = None
        if config.refit_warm_start:
            logger.info("two-tower: continuing the fitted model for one pass over the valid window")
            warm = _WarmStart(trained, optimiser_state, timestamp_us(trained.as_of))
        else:
            logger.info("two-tower: refitting on the test-stage history for %d epochs", epochs)
        refitted, _, _ = _fit(
            split.history("test"),
            split.tables.items,
            split.cutoff("test"),
            config,
            max_epochs=1 if warm is not None else epochs,
            deadline=deadline,
            monitor=None,
            phase="refit",
            warm=warm,
        )
    refitted.epochs = trained.epochs + refitted.epochs
    return trained, refitted


# =========================================================================== cold start


def cold_start_task(
    split: DataSplit, config: EvaluationConfig, stage: Stage = "test"
) -> EvaluationTask:
    """Evaluation task for listings created inside the `stage` window (after its cut-off).

    Candidates: the listings available at the cut-off plus those created during the window
    (as a served system that embeds new listings when they are posted); relevant: each
    user's positives on those new listings only; users: those with at least one. Masking
    is the standard protocol's.
    """
    base = build_evaluation_task(split, stage, config)
    cutoff = split.cutoff(stage)
    if cutoff is None:
        raise ValueError(
            "cold_start_task needs a temporal split: a fixed split has no cut-off and no "
            "listing creation times"
        )
    created = split.tables.items["created_at"]
    window_end = split.window(stage)["ts"].max()
    new = ((created > cutoff) & (created <= window_end)).fillna(False).to_numpy(bool)
    relevant = sp.csr_matrix(base.relevant.multiply(new[None, :].astype(np.float32)))
    relevant.eliminate_zeros()
    keep = np.diff(relevant.indptr) > 0
    if not keep.any():
        raise ValueError(f"no {stage} positive falls on a listing created inside the window")
    return replace(
        base,
        user_ids=base.user_ids[keep],
        relevant=sp.csr_matrix(relevant[keep]),
        excluded=sp.csr_matrix(base.excluded[keep]),
        recommendable=base.recommendable | new,
    )


def _epoch_us(values: pd.Series) -> np.ndarray:
    stamps = pd.to_datetime(values, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)).to_numpy(np.int64)
