"""One epoch: the batches (time windows, runs of one user's targets), their sampled-softmax
loss with the log-Q correction, and the popularity shares it subtracts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from components.config import TwoTowerConfig
from components.retrieval.data_parallel import Ranks
from components.retrieval.item_features import (
    NO_DATE,
    UNKNOWN,
)
from components.retrieval.two_tower_network import (
    HistoryBatch,
    ItemBatch,
    TwoTowerModel,
    activity_buckets,
    sampled_softmax_loss,
)
from components.retrieval.two_tower_training.data import (
    _extra_negatives,
    _training_bags,
    _TrainingData,
)
from components.retrieval.two_tower_training.optimiser import _Adam

logger = logging.getLogger(__name__)


def _train_epoch(
    model: TwoTowerModel,
    optimiser: _Adam,
    data: _TrainingData,
    config: TwoTowerConfig,
    id_dropout: float,
    rng: np.random.Generator,
    deadline: float,
    *,
    ranks: Ranks | None = None,
) -> tuple[float, bool, list[int]]:
    """One pass over the targets in seeded random batches; (mean loss, finished, the
    examples each rank trained on).

    With `ranks`: every rank draws the same batches from `rng` (seeded alike on all
    ranks) and takes its own part of each (`np.array_split` by rank); the step uses the
    gradient of the whole batch's mean loss (each rank's weighted by its examples), so an
    epoch takes the optimiser steps of the single-process run. What is drawn inside a part
    (negatives: `extra_negatives` per rank, id dropout, bags) comes from a per-rank stream,
    which keeps `rng` in step across ranks for the next epoch's batches.
    """
    model.train()
    total, batches, mine = 0.0, 0, 0
    epoch_batches = _epoch_batches(data, config, rng)
    sampling = rng
    if ranks is not None:
        sampling = np.random.default_rng([int(rng.integers(2**63)), ranks.rank])
    for batch, shares in epoch_batches:
        late = time.monotonic() > deadline
        if ranks is None and late:
            return total / max(batches, 1), False, [mine]
        if len(batch) < 2:
            continue
        part = batch if ranks is None else np.array_split(batch, ranks.size)[ranks.rank]
        optimiser.zero_grad(set_to_none=True)
        loss = None
        if not late and len(part):
            loss = _batch_loss(model, data, part, shares, config, id_dropout, sampling)
            loss.backward()
            mine += len(part)
        if ranks is None:
            loss_value = float(loss.detach())
        else:
            late, loss_value = ranks.average_gradients(model, loss, len(part), late)
            if late:
                return total / max(batches, 1), False, ranks.per_rank(mine)
        optimiser.step()
        total += loss_value
        batches += 1
    return total / max(batches, 1), True, [mine] if ranks is None else ranks.per_rank(mine)


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
    # np.unique sorts the batch's keys: a lookup table over every (listing, age) key would
    # cost the whole catalogue per step.
    keys, inverse = np.unique(rows * data.featurizer.n_age_buckets + age, return_inverse=True)
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
    # Not negatives: the target's own listing, and the other targets of the same user
    # (runs of a user's targets share a batch, see `_user_run_order`).
    same = target_rows[:, None] == candidate_rows[None, :]
    owners = index.user_codes[batch]
    same[:, : len(batch)] |= owners[:, None] == owners[None, :]
    np.fill_diagonal(same[:, : len(batch)], False)
    return sampled_softmax_loss(
        users,
        candidates,
        torch.from_numpy(log_q.astype(np.float32)),
        config.temperature,
        torch.from_numpy(same),
    )


def _epoch_batches(
    data: _TrainingData, config: TwoTowerConfig, rng: np.random.Generator
) -> list[tuple[np.ndarray, _Shares]]:
    """The epoch's batches of targets, each with the item shares of the pool it was drawn
    from (what the log-Q correction needs), in a seeded random order.

    Timed data with a `batch_window`: targets are grouped into windows of that length (the
    boundaries shifted at random each epoch) and each batch is a random part of one window,
    so its negatives are listings live at about the same time and their sampling
    probability is their popularity in that window. Otherwise: one pool. Inside a pool,
    timed targets are shuffled in runs of up to `user_run` consecutive targets of one user
    (`_user_run_order`). Untimed (leave-one-out) targets are shuffled one by one: their bags
    are fresh samples rather than shared prefixes, and on gowalla (no content, so an
    item-tower row is one id lookup) runs lowered tune recall for no speed.
    """
    targets = data.targets
    if not data.timed or config.batch_window is None:
        pool = np.zeros(len(targets), dtype=np.int64)
    else:
        window = pd.Timedelta(config.batch_window) // pd.Timedelta(microseconds=1)
        ts = data.index.ts_us[targets]
        pool = (ts - ts.min() + int(rng.integers(0, window))) // window
    run = config.user_run if data.timed else 1
    order = _user_run_order(pool, data.index.user_codes[targets], run, rng)
    bounds = np.flatnonzero(np.diff(pool[order])) + 1
    pools = np.split(targets[order], bounds)
    batches = []
    for members in pools:
        shares = _Shares.of(data.index.item_rows[members])
        n_batches = -(-len(members) // config.batch_size)
        batches += [(batch, shares) for batch in np.array_split(members, n_batches)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _user_run_order(
    pool: np.ndarray, users: np.ndarray, run: int, rng: np.random.Generator
) -> np.ndarray:
    """Order of the targets (given sorted by user, then time) by pool, then in random runs
    of up to `run` consecutive targets of one user.

    Why: a batch's item-tower pass embeds every distinct listing of its targets' history
    bags, and consecutive targets of one user share all but a few of them. With shuffled
    single targets a batch touches more distinct listings the larger the catalogue (about
    9.5k per 1,024 targets at 4k users, 19k at 20k), which made an example cost twice as
    much on a five times larger marketplace; in runs of 4 it is 6.9k and 10k. `run` 1:
    every target shuffled on its own.
    """
    n = len(pool)
    position = np.arange(n)
    by_user = np.lexsort((position, users, pool))
    pools, owners = pool[by_user], users[by_user]
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = (pools[1:] != pools[:-1]) | (owners[1:] != owners[:-1])
    first = np.flatnonzero(new_user)
    rank = position - first[np.cumsum(new_user) - 1]
    run_id = np.cumsum(new_user | (rank % run == 0)) - 1
    key = rng.random(run_id[-1] + 1 if n else 0)[run_id]
    return by_user[np.lexsort((position, key, pools))]


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
