"""The baselines every model is scored beside (docs/evaluation.md): recent popularity,
co-visitation, and the linear model (EASE, or iALS above `ease.max_items`), fitted on the
same history with the same cut-off as the model they judge."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from components.config import BaselinesConfig, CandidatesConfig
from components.interfaces import Scorer
from components.retrieval.covisitation import Covisitation
from components.retrieval.linear_baseline import fit_linear_baseline
from components.retrieval.popularity import RecentPopularity


def fit_baselines(
    history: pd.DataFrame,
    config: BaselinesConfig,
    as_of: pd.Timestamp | None,
    *,
    fitted: Mapping[str, Scorer] | None = None,
    fitted_with: CandidatesConfig | None = None,
) -> dict[str, Scorer]:
    """Each enabled baseline by name: popularity, covisitation, and ease or ials.

    `fitted`: candidate models already fitted on this same history and cut-off (a
    retrieval stack's, by source name), with the settings `fitted_with`: a baseline whose
    settings equal its source's is that model, not a second fit (a second co-visitation
    matrix costs its memory and time again for the same scores)."""
    fitted = fitted or {}
    baselines: dict[str, Scorer] = {}
    for name in config.enabled:
        same = fitted_with is not None and name in fitted
        if name == "popularity":
            if same and fitted_with.popularity == config.popularity:
                baselines[name] = fitted[name]
            else:
                baselines[name] = RecentPopularity.fit(history, config.popularity, as_of)
        elif name == "covisitation":
            if same and fitted_with.covisitation == config.covisitation:
                baselines[name] = fitted[name]
            else:
                baselines[name] = Covisitation.fit(history, config.covisitation, as_of)
        else:
            if same and (fitted_with.ease, fitted_with.ials) == (config.ease, config.ials):
                linear = fitted[name]
            else:
                linear = fit_linear_baseline(history, config, as_of)
            baselines[linear.name] = linear
    return baselines
