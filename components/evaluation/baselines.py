"""The baselines every model is scored beside (EVALUATION.md): recent popularity,
co-visitation, and the linear model (EASE, or iALS above `ease.max_items`), fitted on the
same history with the same cut-off as the model they judge."""

from __future__ import annotations

import pandas as pd

from components.config import BaselinesConfig
from components.interfaces import Scorer
from components.retrieval.collaborative import Covisitation, fit_linear_baseline
from components.retrieval.popularity import RecentPopularity


def fit_baselines(
    history: pd.DataFrame, config: BaselinesConfig, as_of: pd.Timestamp | None
) -> dict[str, Scorer]:
    """Each enabled baseline by name: popularity, covisitation, and ease or ials."""
    baselines: dict[str, Scorer] = {}
    for name in config.enabled:
        if name == "popularity":
            baselines[name] = RecentPopularity.fit(history, config.popularity, as_of)
        elif name == "covisitation":
            baselines[name] = Covisitation.fit(history, config.covisitation, as_of)
        else:
            linear = fit_linear_baseline(history, config, as_of)
            baselines[linear.name] = linear
    return baselines
