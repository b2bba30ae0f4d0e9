"""A catalogue above `ease.max_items` with every candidate source configured: the retrieval
stack fits each model once (the large-catalogue path used to be able to fit iALS twice)."""

from __future__ import annotations

from collections import Counter
from typing import get_args

import numpy as np
import pytest

from components.config import CandidatesConfig, PipelineConfig, SourceName, SyntheticSourceConfig
from components.data.synthetic import generate_marketplace
from components.retrieval.candidate_sources import CategoryPopularitySource
from components.retrieval.covisitation import Covisitation
from components.retrieval.ease import Ease
from components.retrieval.graph_filter import GraphFilter
from components.retrieval.ials import Ials
from components.retrieval.popularity import RecentPopularity
from components.retrieval.rp3beta import Rp3Beta
from components.retrieval.stack import RetrievalStack

MODEL_CLASSES = (
    RecentPopularity,
    Covisitation,
    Ease,
    Ials,
    GraphFilter,
    Rp3Beta,
    CategoryPopularitySource,
)


@pytest.fixture(scope="module")
def tables():
    config = SyntheticSourceConfig(n_users=80, n_sellers=40, n_days=10, listings_per_day=20)
    return generate_marketplace(config).tables


def test_every_source_on_a_large_catalogue_fits_each_model_once(tables, monkeypatch) -> None:
    fits: Counter[str] = Counter()

    def counting(cls: type) -> None:
        original = cls.fit  # bound classmethod

        def fit(*args, **kwargs):
            fits[cls.__name__] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, "fit", fit)

    for cls in MODEL_CLASSES:
        counting(cls)
    every_source = get_args(SourceName)
    candidates = CandidatesConfig(
        sources=every_source,
        ease={"max_items": 10},
        ials={"iterations": 2, "factors": 4},
        graph_filter={"factors": 4},
        popularity={"window": "5D", "half_life": None, "event_weights": {}},
    )
    config = PipelineConfig.model_validate(
        {
            "name": "large-catalogue",
            "source": {"kind": "synthetic"},
            "model": {"candidates": candidates.model_dump(mode="json")},
        }
    )
    items = tables.items
    assert items["item_id"].nunique() > candidates.ease.max_items
    moment = tables.interactions["ts"].max()
    stack = RetrievalStack.fit(
        tables.interactions,
        items,
        moment,
        np.ones(len(items), dtype=bool),
        config.model.candidates,
        config.evaluation.excluded_events,
    )
    users = tables.interactions["user_id"].astype(str).unique()[:5].tolist()
    names = {source.name for source in stack.sources}
    stack.candidates(users)  # every source answers, fitting nothing more
    # `linear` is iALS above ease.max_items, so `factors` (iALS again) is left out; EASE,
    # whose items^2 weights would not fit, is never fitted; the two-tower source is the
    # encoder and its index (none here), not a fitted model.
    assert isinstance(stack.models["linear"], Ials) and "factors" not in stack.models
    assert fits == Counter(
        RecentPopularity=1,
        Covisitation=1,
        Ials=1,
        GraphFilter=1,
        Rp3Beta=1,
        CategoryPopularitySource=1,
    )
    assert names == set(every_source) - {"two_tower", "factors"}
