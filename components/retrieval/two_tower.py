"""The fitted two-tower encoder and its scorer: what the candidate stack, the Annoy index,
the ranker's similarity features and serving use.

The two-tower model lives in three modules:
- `components.retrieval.two_tower_network`: the towers, their inputs (item and history
  batches, pooling weights, the history index) and the sampled-softmax loss;
- `components.retrieval.two_tower_training`: `train_two_tower_stages` (fit, early
  stopping through a caller-supplied validation, refit) and its sampling;
- this module: `TrainedTwoTower` (embeds listings and users, saves and loads itself),
  `UserEncoder` (a history prepared once to encode many users), `TwoTowerScorer` (the
  `Scorer` of user-item cosines over a catalogue) and `EpochScorers` (the scorer of each
  epoch's model that early stopping validates, without re-featurizing).

Example
-------
>>> validation = encoder_validation(split, config.model.two_tower, config.evaluation)
... # doctest: +SKIP
>>> trained = train_two_tower(split, config.model.two_tower, "test", validation=validation)
... # doctest: +SKIP
>>> scorer = TwoTowerScorer(trained, split.tables.items, split.history("test"),
...                         split.test_cutoff)  # doctest: +SKIP
>>> evaluate_scorer(scorer, build_evaluation_task(split, "test", config.evaluation), (100,))
... # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.config import TwoTowerConfig
from components.ids import IdPositions
from components.retrieval.item_features import (
    ATTRIBUTE_COLUMNS,
    ItemArrays,
    ItemFeaturizer,
    timestamp_us,
)
from components.retrieval.two_tower_network import (
    US_PER_SECOND,
    HistoryBatch,
    HistoryIndex,
    ItemBatch,
    TwoTowerModel,
    activity_buckets,
    bag_ranges,
    half_life_seconds,
    pooling_weights,
)
from components.retrieval.user_item_scorer import batch_invariant_product, history_before
from components.store import read_json, write_json

#: Score of an item the scorer has no attributes for: below every cosine.
UNKNOWN_ITEM_SCORE = -2.0
#: Rows per forward pass when embedding a catalogue or a user list.
INFERENCE_BATCH = 8192
WEIGHTS_FILE = "two_tower.pt"
META_FILE = "two_tower.json"
ITEM_IDS_FILE = "item_ids.parquet"
USER_IDS_FILE = "user_ids.parquet"
ITEM_TABLE_FILE = "items.parquet"

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

    @cached_property
    def user_positions(self) -> IdPositions:
        """Position of each id-embedded user in `user_ids`, built once."""
        return IdPositions(self.user_ids)

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
        index = HistoryIndex.build(frame, catalogue_index, self.config)
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
            item_table=attribute_table(pd.read_parquet(folder / ITEM_TABLE_FILE)),
            user_ids=user_ids,
            config=config,
            as_of=None if meta["as_of"] is None else pd.Timestamp(meta["as_of"]),
            epochs=list(meta["epochs"]),
        )


@dataclass(eq=False)
class UserEncoder:
    """A user history prepared once (`TrainedTwoTower.user_encoder`); encodes user lists."""

    trained: TrainedTwoTower
    index: HistoryIndex
    #: Item-tower vectors of the history's listings (rows of index.item_rows).
    item_vectors: torch.Tensor
    as_of_us: int | None
    #: The history listings' features (rows of `item_vectors`) and the index, when built by
    #: `TrainedTwoTower.user_encoder` (`EpochScorers` reuses them every epoch).
    prepared: tuple[ItemArrays, HistoryIndex] | None = field(default=None, repr=False)

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

    @cached_property
    def _history_users(self) -> IdPositions:
        return IdPositions(self.index.users.to_numpy(dtype=object))

    def _bags(self, user_ids: np.ndarray) -> HistoryBatch:
        config = self.trained.config
        codes = self._history_users.positions(user_ids)
        known = codes >= 0
        user_starts = np.zeros(len(codes), dtype=np.int64)
        ends = np.zeros(len(codes), dtype=np.int64)
        user_starts[known] = self.index.user_start[codes[known]]
        ends[known] = self.index.user_start[codes[known] + 1]
        starts = np.maximum(user_starts, ends - config.history_length)
        positions, offsets = bag_ranges(starts, ends)
        age = None
        if self.index.ts_us is not None and self.as_of_us is not None:
            query = np.repeat(np.full(len(user_ids), self.as_of_us), np.diff(offsets))
            age = (query - self.index.ts_us[positions]) / US_PER_SECOND
        weights = pooling_weights(
            self.index.event_weights[positions], age, half_life_seconds(config), offsets
        )
        user_index = self.trained.user_positions.positions(user_ids) + 1
        return HistoryBatch(
            items=torch.from_numpy(self.index.item_rows[positions]),
            offsets=torch.from_numpy(offsets[:-1]),
            weights=torch.from_numpy(weights),
            activity=torch.from_numpy(activity_buckets(ends - user_starts)),
            user_ids=torch.from_numpy(user_index.astype(np.int64)),
        )


def attribute_table(items: pd.DataFrame) -> pd.DataFrame:
    """The attribute columns of `items` (what a saved encoder keeps of its listings)."""
    columns = [column for column in ATTRIBUTE_COLUMNS if column in items]
    return items[columns].reset_index(drop=True)


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
        #: Held while the user cache grows: a model server answers on several threads.
        self._user_lock = threading.Lock()
        #: (catalogue list, its vectors, known mask) of the last list scored, swapped whole.
        self._aligned: tuple[Sequence[str] | None, np.ndarray, np.ndarray] = (
            None,
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
        scorer._user_lock = threading.Lock()
        scorer._aligned = (None, np.zeros((0, 0), np.float32), np.zeros(0, bool))
        return scorer

    @cached_property
    def _item_positions(self) -> IdPositions:
        return IdPositions(self.item_index.to_numpy(dtype=object))

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n, d) float32 unit vectors of catalogue items; KeyError for unknown ids."""
        rows = self._item_positions.positions(item_ids)
        if (rows < 0).any():
            missing = list(np.asarray(item_ids, dtype=object)[rows < 0][:5])
            raise KeyError(f"items {missing} are not in the scorer's catalogue")
        return self._item_vectors[rows]

    def user_vectors(self, user_ids: Sequence[str]) -> np.ndarray:
        """(n, d) float32 unit vectors (users with no history: the cold-user vector),
        encoded on first request and kept (a served model asks for one user at a time, on
        several threads: the cache is read and grown under a lock)."""
        wanted = [str(user) for user in user_ids]
        with self._user_lock:
            return self._cached_user_vectors(wanted)

    def _cached_user_vectors(self, wanted: list[str]) -> np.ndarray:
        new = list(dict.fromkeys(user for user in wanted if user not in self._user_rows))
        if new:
            encoded = self._encoder.encode(new)
            base = len(self._user_rows)
            if base + len(new) > len(self._user_vectors):
                # Room for twice as many: appending one user must not copy every vector.
                grown = np.zeros(
                    (max(2 * (base + len(new)), 64), encoded.shape[1]), dtype=np.float32
                )
                grown[:base] = self._user_vectors[:base]
                self._user_vectors = grown
            self._user_vectors[base : base + len(new)] = encoded
            for offset, user in enumerate(new):
                self._user_rows[user] = base + offset
        return self._user_vectors[[self._user_rows[user] for user in wanted]]

    def encode_history_users(self, limit: int) -> int:
        """Encode every user of the history now, when there are at most `limit` (a served
        model: a request then only looks its user up); how many were encoded."""
        users = self._encoder.index.users
        if len(users) > limit:
            return 0
        self.user_vectors(users.astype(str).tolist())
        return len(users)

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """(len(user_ids), len(item_ids)) float32 cosines."""
        users = self.user_vectors(user_ids)
        items, known = self._aligned_items(item_ids)
        scores = batch_invariant_product(users, items.T)
        if not known.all():
            scores[:, ~known] = UNKNOWN_ITEM_SCORE
        return scores.astype(np.float32, copy=False)

    def _aligned_items(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue vectors in the order of `item_ids` (reused while the same object is
        passed again, as `rank_items` does for every batch of users)."""
        source, aligned, known = self._aligned  # one read: another thread may swap it
        if item_ids is not source:
            rows = self._item_positions.positions(item_ids)
            known = rows >= 0
            # float64: see batch_invariant_product.
            aligned = np.zeros((len(rows), self._item_vectors.shape[1]), dtype=np.float64)
            aligned[known] = self._item_vectors[rows[known]]
            self._aligned = (item_ids, aligned, known)
        return aligned, known


# =========================================================================== early stopping


@dataclass
class EpochScorers:
    """`TwoTowerScorer(trained, items, history, as_of)` for each epoch's model of one fit,
    what the early-stopping check scores: the inputs are featurized once per fit (per
    featurizer) and only the towers rerun."""

    items: pd.DataFrame
    history: pd.DataFrame
    as_of: pd.Timestamp | None

    #: What does not change between the epochs of one fit (same featurizer): the items'
    #: features and ages, the history's listings' features and its index.
    _prepared: tuple[Any, ...] | None = field(default=None, init=False, repr=False)

    def scorer(self, trained: TrainedTwoTower) -> TwoTowerScorer:
        """The scorer TwoTowerScorer(trained, items, history, as_of) builds, from the
        inputs featurized for `trained.featurizer` (once, on its first epoch)."""
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
        return TwoTowerScorer._of(
            trained,
            pd.Index(self.items["item_id"].astype("object")),
            trained._item_vectors(arrays, age).numpy(),
            UserEncoder(trained, index, history_vectors, timestamp_us(self.as_of)),
            self.as_of,
        )
