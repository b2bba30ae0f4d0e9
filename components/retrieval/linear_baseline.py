"""The linear baseline of a history: EASE when its catalogue fits, iALS otherwise."""

from __future__ import annotations

import pandas as pd

from components.config import BaselinesConfig, CandidatesConfig
from components.retrieval.ease import Ease
from components.retrieval.ials import Ials
from components.retrieval.user_item_scorer import history_before


def fit_linear_baseline(
    interactions: pd.DataFrame,
    config: BaselinesConfig | CandidatesConfig,
    as_of: pd.Timestamp | None = None,
) -> Ease | Ials:
    """EASE when the history's catalogue fits (<= ease.max_items items), iALS otherwise."""
    frame, as_of = history_before(interactions, as_of)
    if frame["item_id"].nunique() <= config.ease.max_items:
        return Ease.fit(frame, config.ease, as_of)
    return Ials.fit(frame, config.ials, as_of)
