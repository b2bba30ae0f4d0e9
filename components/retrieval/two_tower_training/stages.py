"""The entry points: fit on the train window (early-stopped), then the refit for the
test stage (warm-started or from scratch); see the package docstring.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from components.config import TwoTowerConfig
from components.data.split import DataSplit
from components.interfaces import Validation
from components.retrieval.item_features import (
    timestamp_us,
)
from components.retrieval.two_tower import EpochScorers, TrainedTwoTower
from components.retrieval.two_tower_training.loop import (
    _deterministic,
    _fit,
    _Monitor,
)
from components.retrieval.two_tower_training.optimiser import _WarmStart

logger = logging.getLogger(__name__)


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

    `config.processes` > 1 (`REWEAR_ENCODER_PROCESSES` sets it at config load): each phase trains
    data-parallel in that many processes (`_fit_in_processes`).
    """
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
