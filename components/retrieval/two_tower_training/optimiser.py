"""The optimiser (fused Adam, lazy Adam for large id tables) and the warm start: a fitted
model's weights and Adam moments carried into a refit with extended vocabularies.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from components.config import TwoTowerConfig
from components.retrieval.item_features import (
    ItemFeaturizer,
)
from components.retrieval.two_tower import TrainedTwoTower
from components.retrieval.two_tower_network import (
    TwoTowerModel,
)

logger = logging.getLogger(__name__)


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
