"""The fit loop: epochs, early stopping on the caller's validation, the safety net, and
the same loop data-parallel in several processes (`components.retrieval.data_parallel`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.config import TwoTowerConfig
from components.interfaces import Validation
from components.retrieval.data_parallel import Ranks, run_in_processes
from components.retrieval.item_features import (
    ItemFeaturizer,
)
from components.retrieval.two_tower import EpochScorers, TrainedTwoTower, attribute_table
from components.retrieval.two_tower_network import (
    TwoTowerModel,
)
from components.retrieval.two_tower_training.batches import _train_epoch
from components.retrieval.two_tower_training.data import _build_training_data, _TrainingData
from components.retrieval.two_tower_training.optimiser import (
    _Adam,
    _adam,
    _extended_featurizer,
    _load_warm_start,
    _WarmStart,
)
from components.retrieval.user_item_scorer import history_before

logger = logging.getLogger(__name__)


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
    fitting = _start_fit(history, items, as_of, config, phase=phase, warm=warm, ranks=ranks)
    best = _BestEpoch()
    epochs_done = 0
    for epoch in range(1, max_epochs + 1):
        record, finished = _run_epoch(fitting, epoch, deadline=deadline, monitor=monitor, best=best)
        epochs_done = epoch
        patience_spent = monitor is not None and best.stale >= config.patience
        if _stop_after_epoch(fitting, record, finished, deadline, patience_spent):
            break
    if best.state is not None:
        fitting.model.load_state_dict(best.state)
        return fitting.trained, best.epoch, best.optimiser
    return fitting.trained, epochs_done, fitting.optimiser.state_dict()


@dataclass(frozen=True)
class _Fitting:
    """One fit's working parts: its model and optimiser, the data and random generator the
    epochs draw from, and the result (`trained`, sharing the model) they are recorded in."""

    phase: str
    config: TwoTowerConfig
    model: TwoTowerModel
    optimiser: _Adam
    data: _TrainingData
    trained: TrainedTwoTower
    rng: np.random.Generator
    id_dropout: float
    ranks: Ranks | None

    @property
    def leader(self) -> bool:
        """Whether this process validates, logs and decides (one process, or rank 0)."""
        return self.ranks is None or self.ranks.leader


@dataclass
class _BestEpoch:
    """Early-stopping bookkeeping: the best validation value so far, its epoch, the model
    and optimiser state at that epoch, and the epochs since then without a better one."""

    value: float = float("-inf")
    epoch: int = 0
    state: dict[str, Any] | None = None
    optimiser: dict[str, Any] = field(default_factory=dict)
    stale: int = 0

    def update(self, value: float, epoch: int, model: TwoTowerModel, optimiser: _Adam) -> None:
        """Keep `epoch`'s weights and optimiser state when `value` beats the best so far."""
        if value > self.value:
            self.value, self.epoch, self.stale = value, epoch, 0
            self.state = copy.deepcopy(model.state_dict())
            self.optimiser = copy.deepcopy(optimiser.state_dict())
        else:
            self.stale += 1


def _start_fit(
    history: pd.DataFrame,
    items: pd.DataFrame,
    as_of: pd.Timestamp | None,
    config: TwoTowerConfig,
    *,
    phase: str,
    warm: _WarmStart | None,
    ranks: Ranks | None,
) -> _Fitting:
    """The training data of `history` strictly before `as_of` and the model to train on it
    (`warm`'s weights and moments when given; rank 0's on every rank)."""
    leader = ranks is None or ranks.leader
    frame, as_of = history_before(history, as_of)
    if frame.empty:
        raise ValueError(
            f"two-tower {phase}: no interaction before {as_of} to learn from; "
            "check the split's cut-offs"
        )
    seen, featurizer, data = _training_data(frame, items, config, warm)
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
    return _Fitting(phase, config, model, optimiser, data, trained, rng, id_dropout, ranks)


def _training_data(
    frame: pd.DataFrame,
    items: pd.DataFrame,
    config: TwoTowerConfig,
    warm: _WarmStart | None,
) -> tuple[pd.DataFrame, ItemFeaturizer, _TrainingData]:
    """The listings `frame` interacted with, their featurizer (`warm`'s, extended with the
    new values) and the training data; a warm start's targets are those at or after
    `warm.since_us` only."""
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
    return seen, featurizer, data


def _run_epoch(
    fitting: _Fitting,
    epoch: int,
    *,
    deadline: float,
    monitor: _Monitor | None,
    best: _BestEpoch,
) -> tuple[dict[str, Any], bool]:
    """Train one epoch, validate it (rank 0 of a monitored fit, into `best`) and record it
    in `fitting.trained.epochs`; returns the record and whether the epoch ran to its end."""
    started = time.monotonic()
    loss, finished, rank_examples = _train_epoch(
        fitting.model,
        fitting.optimiser,
        fitting.data,
        fitting.config,
        fitting.id_dropout,
        fitting.rng,
        deadline,
        ranks=fitting.ranks,
    )
    record: dict[str, Any] = {
        "phase": fitting.phase,
        "epoch": epoch,
        "loss": loss,
        "complete": finished,
        "examples": len(fitting.data.targets),
    }
    if fitting.ranks is not None:
        record.update(processes=fitting.ranks.size, rank_examples=rank_examples)
    record["train_s"] = round(time.monotonic() - started, 2)
    if monitor is not None and fitting.leader:
        metrics = _validate(fitting, monitor)
        record.update({f"valid_{name}": value for name, value in metrics.items()})
        best.update(metrics[monitor.validation.metric], epoch, fitting.model, fitting.optimiser)
    record["total_s"] = round(time.monotonic() - started, 2)
    fitting.trained.epochs.append(record)
    if fitting.leader:
        logger.info("two-tower %s epoch %d: %s", fitting.phase, epoch, record)
    return record, finished


def _validate(fitting: _Fitting, monitor: _Monitor) -> dict[str, float]:
    """The monitor's metrics of the model as trained so far (a rank lends it all threads)."""
    ranks = fitting.ranks
    with ranks.all_threads() if ranks is not None else contextlib.nullcontext():
        return monitor.validation(monitor.scorers.scorer(fitting.trained))


def _stop_after_epoch(
    fitting: _Fitting,
    record: dict[str, Any],
    finished: bool,
    deadline: float,
    patience_spent: bool,
) -> bool:
    """Whether the fit stops after `record`'s epoch: out of patience, or out of time (the
    safety net, flagged in `record` and warned about); rank 0 decides for all ranks."""
    out_of_time = not finished or time.monotonic() > deadline
    stop = out_of_time or patience_spent
    if fitting.ranks is not None:
        stop = fitting.ranks.decide(stop)  # rank 0's clock and monitor decide for all
    if out_of_time:
        record["safety_net_reached"] = True
        if fitting.leader:
            logger.warning(
                "two-tower %s: stopped by the safety net max_training_seconds (%.0f s) at "
                "epoch %d: this model depends on the machine's speed; raise "
                "model.two_tower.max_training_seconds",
                fitting.phase,
                fitting.config.max_training_seconds,
                record["epoch"],
            )
    return stop


@dataclass(frozen=True)
class _Monitor:
    """Early stopping: the caller's `validation` of a scorer of each epoch's model on the
    valid window (`scorers` featurizes that window once per fit)."""

    validation: Validation
    scorers: EpochScorers


#: What the ranks may take beyond the training deadline before the parent gives up on
#: them: start-up (imports, the same data built in every rank), the validation checks and
#: the result's transfer.
_RANKS_OVERHEAD_S = 900.0


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
