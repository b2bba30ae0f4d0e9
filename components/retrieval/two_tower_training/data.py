"""The numpy training data the batches are drawn from: targets, their history bags, the
catalogue's features and the uniform extra negatives.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import TwoTowerConfig
from components.retrieval.item_features import (
    NO_DATE,
    UNKNOWN,
    ItemArrays,
    ItemFeaturizer,
)
from components.retrieval.two_tower_network import (
    US_PER_SECOND,
    HistoryIndex,
    bag_ranges,
    epoch_us,
    half_life_seconds,
    pooling_weights,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _TrainingData:
    """Everything the training loop samples from, as numpy arrays."""

    index: HistoryIndex
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
    index = HistoryIndex.build(frame, catalogue_index, config)
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
        sold_us[known] = epoch_us(sold[known])
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
        positions, offsets = bag_ranges(starts, ends)
        query = np.repeat(index.ts_us[batch], np.diff(offsets))
        age = (query - index.ts_us[positions]) / US_PER_SECOND
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
        index.event_weights[positions], age, half_life_seconds(config), offsets
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


def _has_content(catalogue: ItemArrays) -> bool:
    return bool(
        (catalogue.categorical != UNKNOWN).any()
        or (catalogue.price != UNKNOWN).any()
        or len(catalogue.text)
        or (catalogue.created_us != NO_DATE).any()
    )
