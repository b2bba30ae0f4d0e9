"""Training of the two-tower encoder: `train_two_tower_stages` and everything it samples.

What is here: the fit (epochs, early stopping, the warm-started refit), the sampled
batches and their loss, and the numpy training data they are drawn from. The towers and
the loss function are in `components.retrieval.two_tower_network`; the fitted model it
returns (`TrainedTwoTower`) and its scorer are in `components.retrieval.two_tower`.

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
recall fell epoch after epoch; with daily windows it holds). The uniform negatives are what
teaches freshness (listing age): the other targets are as fresh as the positive, live stock
mostly is not. Figures: docs/models.md, "Measurements behind the defaults".

Without timestamps (fixed splits) each training interaction is a
target whose history is a fresh sample of the user's other training items (leave-one-out),
never a valid/test item, and batches are drawn from all interactions. With timestamps the
targets are shuffled in runs of up to `user_run` consecutive targets of one user: their
history bags are nearly the same prefix, whose listings the batch's item-tower pass embeds
once, so an example costs about the same on a large catalogue as on a small one; a user's
other targets in the batch are masked out of its negatives.

Epochs and refit (`train_two_tower`): the model is fitted on `split.history("valid")` and
early-stopped on the valid window by the `validation` the caller passes in (a
`components.interfaces.Validation`; the pipeline's is exact full-ranking
recall@`early_stopping_k` with history masked as in the evaluation protocol, built by
`encoder_validation` of the evaluation package: retrieval imports no evaluation code); the
best epoch's weights are kept. For stage "test" of a temporal split the served model must
also have seen the most recent week (`refit_on_test_history`): by default
(`refit_warm_start`) the early-stopped model, with the Adam moments of its epoch, is
continued for one pass over the valid window's targets (their histories reach back into
the train window; listings, sellers and brands first seen in the valid window get rows of
their own, bucket edges stay the fit's). That is what a from-scratch refit on train + valid
for the chosen epochs would teach it about the new week, at a fraction of the cost (on the
synthetic marketplace the served model's test recall@100 is as good or better; more passes
over one week overfit it); with `refit_warm_start: false` the refit is from scratch. A
fixed split's test-stage history is the train file, so the early-stopped model is the
result.

Speed (CPU, 2 threads): the optimiser is Adam's fused kernel, and lazy Adam for id tables
above `sparse_id_rows` (`_Adam`: a step then costs its batch, not the catalogue); the
item tower runs once
per distinct (listing, age bucket) of a batch, and on the content path once per batch when
no listing has content features (fixed splits); the early-stopping check scores the model
through `EpochScorers`, which featurizes the valid window's listings and histories once per
fit and only reruns the towers.

Stage "valid" is the tuning mode: its valid-window metrics chose the epoch, so they are
optimistic by construction.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from components.config import TwoTowerConfig
from components.data.split import DataSplit
from components.interfaces import Validation
from components.retrieval.collaborative import history_before
from components.retrieval.data_parallel import Ranks, run_in_processes
from components.retrieval.item_features import (
    NO_DATE,
    UNKNOWN,
    ItemArrays,
    ItemFeaturizer,
    timestamp_us,
)
from components.retrieval.two_tower import EpochScorers, TrainedTwoTower, attribute_table
from components.retrieval.two_tower_network import (
    US_PER_SECOND,
    HistoryBatch,
    HistoryIndex,
    ItemBatch,
    TwoTowerModel,
    activity_buckets,
    bag_ranges,
    epoch_us,
    half_life_seconds,
    pooling_weights,
    sampled_softmax_loss,
)
from components.settings import RewearSettings

logger = logging.getLogger(__name__)


# =========================================================================== entry points


def train_two_tower(
    split: DataSplit,
    config: TwoTowerConfig,
    stage: Literal["valid", "test"] = "test",
    *,
    validation: Validation | None,
) -> TrainedTwoTower:
    """Train the two-tower encoder for evaluation at `stage` (see `train_two_tower_stages`)."""
    return train_two_tower_stages(split, config, stage, validation=validation)[1]


def train_two_tower_stages(
    split: DataSplit,
    config: TwoTowerConfig,
    stage: Literal["valid", "test"] = "test",
    *,
    validation: Validation | None,
) -> tuple[TrainedTwoTower, TrainedTwoTower]:
    """(fitted on the train window, the model for `stage`); see the module docstring.

    The first never saw the valid window: the ranker's label-stage features use it.

    Fits on `split.history("valid")`, early-stopped on `validation` (the caller's check of
    the valid window: it is handed a scorer of each epoch's model on the valid stage, its
    metrics are recorded as `valid_<name>`; None: no early stopping, `max_epochs` epochs).
    Stage "test" of a temporal split then refits on `split.history("test")`
    for the chosen epochs (`config.refit_on_test_history`). Deterministic on CPU for a
    given seed, data and thread count: time never decides what is trained, except for
    `max_training_seconds` (a safety net over both phases; an epoch that reaches it is
    recorded with `safety_net_reached`).

    `config.processes` > 1 (or `REWEAR_ENCODER_PROCESSES`): each phase trains
    data-parallel in that many processes (`_fit_in_processes`).
    """
    config = _with_environment(config)
    deadline = time.monotonic() + config.max_training_seconds
    monitor = None
    if validation is not None:
        scorers = EpochScorers(split.tables.items, split.history("valid"), split.cutoff("valid"))
        monitor = _Monitor(validation, scorers)
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


# =========================================================================== the fit


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
    ranks: Ranks | None = None,
) -> tuple[TrainedTwoTower, int, dict[str, Any]]:
    """Fit on `history` strictly before `as_of`; returns the model (best epoch's weights
    when monitored), the number of epochs that model was trained for and the optimiser
    state at that epoch. `warm`: continue that model (vocabularies extended with the new
    values, bucket edges kept) on the targets at or after `warm.since_us` only.

    `config.processes` > 1: the same fit in that many processes (`_fit_in_processes`),
    each of which runs this function with its `ranks`: every rank builds the same data,
    takes its part of every batch and steps on the whole batch's gradient; rank 0 alone
    runs `monitor`, logs, and decides when to stop."""
    if ranks is None and config.processes > 1:
        return _fit_in_processes(
            history,
            items,
            as_of,
            config,
            max_epochs=max_epochs,
            deadline=deadline,
            monitor=monitor,
            phase=phase,
            warm=warm,
        )
    leader = ranks is None or ranks.leader
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
    if id_dropout != config.item_id_dropout and leader:
        logger.info("two-tower: listings have no content features; item-id dropout off")

    model = TwoTowerModel(featurizer, len(user_ids), config)
    optimiser = _adam(model, config)
    if warm is not None:
        _load_warm_start(model, optimiser, warm, featurizer, user_ids)
    if ranks is not None:
        ranks.broadcast_parameters(model)
    trained = TrainedTwoTower(
        model=model,
        featurizer=featurizer,
        item_table=attribute_table(seen),
        user_ids=user_ids,
        config=config,
        as_of=as_of,
    )
    best_value, best_epoch, best_state, stale = float("-inf"), 0, None, 0
    best_optimiser: dict[str, Any] = {}
    epochs_done = 0
    for epoch in range(1, max_epochs + 1):
        started = time.monotonic()
        loss, finished, rank_examples = _train_epoch(
            model, optimiser, data, config, id_dropout, rng, deadline, ranks=ranks
        )
        epochs_done = epoch
        record: dict[str, Any] = {
            "phase": phase,
            "epoch": epoch,
            "loss": loss,
            "complete": finished,
            "examples": len(data.targets),
        }
        if ranks is not None:
            record.update(processes=ranks.size, rank_examples=rank_examples)
        record["train_s"] = round(time.monotonic() - started, 2)
        if monitor is not None and leader:
            with ranks.all_threads() if ranks is not None else contextlib.nullcontext():
                metrics = monitor.validation(monitor.scorers.scorer(trained))
            record.update({f"valid_{name}": value for name, value in metrics.items()})
            value = metrics[monitor.validation.metric]
            if value > best_value:
                best_value, best_epoch, stale = value, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
                best_optimiser = copy.deepcopy(optimiser.state_dict())
            else:
                stale += 1
        record["total_s"] = round(time.monotonic() - started, 2)
        trained.epochs.append(record)
        if leader:
            logger.info("two-tower %s epoch %d: %s", phase, epoch, record)
        out_of_time = not finished or time.monotonic() > deadline
        stop = out_of_time or (monitor is not None and stale >= config.patience)
        if ranks is not None:
            stop = ranks.decide(stop)  # rank 0's clock and monitor decide for all
        if out_of_time:
            record["safety_net_reached"] = True
            if leader:
                logger.warning(
                    "two-tower %s: stopped by the safety net max_training_seconds (%.0f s) at "
                    "epoch %d: this model depends on the machine's speed; raise "
                    "model.two_tower.max_training_seconds",
                    phase,
                    config.max_training_seconds,
                    epoch,
                )
        if stop:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        return trained, best_epoch, best_optimiser
    return trained, epochs_done, optimiser.state_dict()


@dataclass(frozen=True)
class _Monitor:
    """Early stopping: the caller's `validation` of a scorer of each epoch's model on the
    valid window (`scorers` featurizes that window once per fit)."""

    validation: Validation
    scorers: EpochScorers


# =========================================================================== data-parallel fit

#: What the ranks may take beyond the training deadline before the parent gives up on
#: them: start-up (imports, the same data built in every rank), the validation checks and
#: the result's transfer.
_RANKS_OVERHEAD_S = 900.0


def _with_environment(config: TwoTowerConfig) -> TwoTowerConfig:
    """`config` with `REWEAR_ENCODER_PROCESSES` applied when set: a deployment (e.g. on
    Dask workers with CPUs to spare) sets the process count without editing configs, and
    the trained model's config records the count it was trained with."""
    processes = RewearSettings().encoder_processes
    if processes is None or processes == config.processes:
        return config
    return config.model_copy(update={"processes": processes})


def _fit_in_processes(
    history: pd.DataFrame,
    items: pd.DataFrame,
    as_of: pd.Timestamp | None,
    config: TwoTowerConfig,
    *,
    max_epochs: int,
    deadline: float,
    monitor: _Monitor | None,
    phase: str,
    warm: _WarmStart | None,
) -> tuple[TrainedTwoTower, int, dict[str, Any]]:
    """`_fit` in `config.processes` gloo ranks (components.retrieval.data_parallel); rank
    0's model, epoch count and optimiser state. The deadline travels as wall-clock time."""
    remaining = deadline - time.monotonic()
    logger.info("two-tower %s: data-parallel in %d processes", phase, config.processes)
    return run_in_processes(
        _fit_rank,
        (history, items, as_of, config, max_epochs, time.time() + remaining, monitor, phase, warm),
        config.processes,
        timeout_s=remaining + _RANKS_OVERHEAD_S,
        what=f"two-tower {phase}",
        log_name=__name__,
    )


def _fit_rank(
    ranks: Ranks,
    history: pd.DataFrame,
    items: pd.DataFrame,
    as_of: pd.Timestamp | None,
    config: TwoTowerConfig,
    max_epochs: int,
    deadline_wall: float,
    monitor: _Monitor | None,
    phase: str,
    warm: _WarmStart | None,
) -> tuple[TrainedTwoTower, int, dict[str, Any]]:
    """One rank of `_fit_in_processes`: the same `_fit`, seeded as the parent seeds it."""
    with _deterministic(config.seed):
        return _fit(
            history,
            items,
            as_of,
            config,
            max_epochs=max_epochs,
            deadline=time.monotonic() + (deadline_wall - time.time()),
            monitor=monitor if ranks.leader else None,
            phase=phase,
            warm=warm,
            ranks=ranks,
        )


# =========================================================================== warm start


@dataclass(frozen=True)
class _WarmStart:
    """Where a warm-started refit continues from: the early-stopped model, the optimiser
    state of its epoch, and the cut-off of the data it was fitted on (targets at or after
    it are the ones it has not seen)."""

    trained: TrainedTwoTower
    optimiser_state: dict[str, Any]
    since_us: int | None


class _Adam:
    """Adam for the dense weights (the fused CPU kernel: one pass over every parameter, same
    update rule, several times faster than the per-tensor loop) and lazy Adam
    (`torch.optim.SparseAdam`) for the id tables built with sparse gradients (above
    `sparse_id_rows` rows): those move only the rows a batch touched, moments included,
    so a step costs the batch, not the catalogue. Weight decay applies to the dense
    weights only (SparseAdam has none)."""

    def __init__(self, model: nn.Module, config: TwoTowerConfig) -> None:
        sparse = {
            f"{name}.weight"
            for name, module in model.named_modules()
            if isinstance(module, nn.Embedding) and module.sparse
        }
        named = list(model.named_parameters())
        parameters = dict(named)
        #: Parameter names in each part's order (how a state dict's positions are read).
        self.names = {
            "dense": [name for name, _ in named if name not in sparse],
            "sparse": [name for name, _ in named if name in sparse],
        }
        self._sparse = [parameters[name] for name in self.names["sparse"]]
        self.parts: dict[str, torch.optim.Optimizer] = {
            "dense": torch.optim.Adam(
                [parameters[name] for name in self.names["dense"]],
                lr=config.learning_rate,
                weight_decay=config.weight_decay,
                fused=True,
            )
        }
        if self._sparse:
            self.parts["sparse"] = torch.optim.SparseAdam(self._sparse, lr=config.learning_rate)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for parameter in self._sparse:
            if parameter.grad is not None and not parameter.grad.is_sparse:
                # Data-parallel ranks average gradients densely: back to the rows touched.
                parameter.grad = parameter.grad.to_sparse(sparse_dim=1)
        for part in self.parts.values():
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


def _adam(model: nn.Module, config: TwoTowerConfig) -> _Adam:
    return _Adam(model, config)


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
    optimiser: _Adam,
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
    parameters = dict(model.named_parameters())
    moments = copy.deepcopy(warm.optimiser_state)
    for part, state in moments.items():
        for position, values in state["state"].items():
            name = optimiser.names[part][position]
            for key in ("exp_avg", "exp_avg_sq"):
                zeros = torch.zeros_like(parameters[name].detach())
                values[key] = moved(name, values[key], zeros)
    optimiser.load_state_dict(moments)


# =========================================================================== epochs, batches, loss


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


# =========================================================================== training data


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


# =========================================================================== helpers


def _has_content(catalogue: ItemArrays) -> bool:
    return bool(
        (catalogue.categorical != UNKNOWN).any()
        or (catalogue.price != UNKNOWN).any()
        or len(catalogue.text)
        or (catalogue.created_us != NO_DATE).any()
    )


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
