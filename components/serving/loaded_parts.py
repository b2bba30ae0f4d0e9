"""What a bundle's model parts are once loaded: the two-tower retrieval (encoder over the
bundled histories, Annoy index) and the two-stage model, each prepared so that a request
only looks things up (every known user encoded once at load)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.serving.bundle import TWO_STAGE_DIR

#: Up to this many known users, the load encodes them all once (64-dim: 256 MB at 1M).
MAX_PRECOMPUTED_USERS = 1_000_000


@dataclass
class ServedRetrieval:
    """The two-tower path: user encoder over the bundled histories, and the Annoy index."""

    trained: object
    encoder: object
    index: object
    known_users: frozenset[str]
    as_of: pd.Timestamp | None
    item_vector_cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    #: Every known user's vector, encoded once at load (row per user in `user_rows`); the
    #: bundled histories are fixed, so a request needs only a lookup. None above
    #: MAX_PRECOMPUTED_USERS users (then each request encodes its users).
    user_matrix: np.ndarray | None = None
    user_rows: dict[str, int] = field(default_factory=dict)
    #: Catalogue row of each index position (-1: not in the catalogue), set at load.
    index_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def load_retrieval(
    folder: Path, catalogue: pd.DataFrame, metadata: dict[str, object]
) -> ServedRetrieval:
    from components.retrieval.ann_index import AnnIndex
    from components.retrieval.two_tower import TrainedTwoTower

    trained = TrainedTwoTower.load(folder / "encoder")
    history = pd.read_parquet(folder / "history.parquet")
    until = metadata.get("data_until")
    as_of = None if until is None else pd.Timestamp(str(until)) + pd.Timedelta(microseconds=1)
    items = catalogue.drop(columns=["available"])
    encoder = trained.user_encoder(history, as_of, items)
    users = sorted(set(history["user_id"].astype(str)))
    user_matrix = None
    if len(users) <= MAX_PRECOMPUTED_USERS:
        user_matrix = encoder.encode(users)
    return ServedRetrieval(
        trained=trained,
        encoder=encoder,
        index=AnnIndex.load(folder / "index"),
        known_users=frozenset(users),
        as_of=as_of,
        user_matrix=user_matrix,
        user_rows={user: row for row, user in enumerate(users)} if user_matrix is not None else {},
    )


def load_two_stage(folder: Path) -> Any:
    if not (folder / TWO_STAGE_DIR).is_dir():
        return None
    from components.ranking.model import TwoStageModel

    model = TwoStageModel.load(folder / TWO_STAGE_DIR)
    if model.stack.vectors is not None:
        model.stack.vectors.encode_history_users(MAX_PRECOMPUTED_USERS)
    return model
