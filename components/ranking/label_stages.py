"""The ranker's label stages: which history its candidates and features see, and which
window's events label them (see `RankerConfig.label_windows`).

Labels always lie after the data their candidates and features see:
- temporal protocol: candidates and features at the valid cut-off T_valid, from the history
  before it; labels = the valid window's events (the test window is never touched), and
  each earlier label window of the same length before it;
- fixed split: a random `ranker.holdout_share` of each user's training interactions is held
  out as labels, the candidate models are fitted without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import RankerConfig
from components.data.split import DataSplit
from components.ranking.dataset import holdout_interactions


@dataclass(frozen=True)
class LabelStage:
    """What the ranker learns from: history before `moment`, labels from `window`."""

    history: pd.DataFrame
    window: pd.DataFrame
    moment: pd.Timestamp | None
    available: np.ndarray


def label_stages(data: DataSplit, ranker: RankerConfig) -> list[LabelStage]:
    """The ranker's label stages, latest first (see the module docstring and
    `RankerConfig.label_windows`)."""
    items = data.tables.items
    if data.protocol != "temporal":
        kept, held = holdout_interactions(data.train, ranker.holdout_share, ranker.seed)
        return [
            LabelStage(
                history=kept, window=held, moment=None, available=np.ones(len(items), dtype=bool)
            )
        ]
    length = data.test_cutoff - data.valid_cutoff
    stages = [
        LabelStage(
            history=data.history("valid"),
            window=data.valid,
            moment=data.valid_cutoff,
            available=data.available_items(data.valid_cutoff).to_numpy(bool),
        )
    ]
    train = data.train
    for step in range(1, ranker.label_windows):
        start = data.valid_cutoff - step * length
        window = train[(train["ts"] >= start) & (train["ts"] < start + length)]
        history = train[train["ts"] < start]
        if window.empty or history.empty:
            break
        stages.append(
            LabelStage(
                history=history,
                window=window,
                moment=start,
                available=data.available_items(start).to_numpy(bool),
            )
        )
    return stages


def label_stage(data: DataSplit, ranker: RankerConfig) -> LabelStage:
    """The latest label stage (the valid window, or the fixed split's holdout)."""
    return label_stages(data, ranker)[0]
