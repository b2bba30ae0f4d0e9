"""The retrieval stack's candidate models: fitted from `model.candidates`, each once."""

from __future__ import annotations

import pytest

from components.config import CandidatesConfig, SyntheticSourceConfig
from components.data.synthetic import generate_marketplace
from components.retrieval import stack as stack_module
from components.retrieval.covisitation import Covisitation
from components.retrieval.ease import Ease
from components.retrieval.graph_filter import GraphFilter
from components.retrieval.ials import Ials
from components.retrieval.popularity import RecentPopularity
from components.retrieval.stack import fit_candidate_models


@pytest.fixture(scope="module")
def history():
    config = SyntheticSourceConfig(n_users=80, n_sellers=40, n_days=10, listings_per_day=20)
    return generate_marketplace(config).tables.interactions


def test_each_source_gets_its_model_from_the_candidates_settings(history) -> None:
    settings = CandidatesConfig(
        sources=("two_tower", "covisitation", "category_popularity", "linear", "factors"),
        popularity={"window": "5D", "half_life": None, "event_weights": {}},
        covisitation={"window": "3D"},
    )
    models = fit_candidate_models(history, settings, history["ts"].max())
    # category_popularity ranks inside categories by the popularity model; the two-tower
    # source is the encoder and its index, not a fitted scorer.
    assert set(models) == {"popularity", "covisitation", "linear", "factors"}
    assert isinstance(models["popularity"], RecentPopularity)
    assert models["popularity"].config.window == "5D"
    assert isinstance(models["covisitation"], Covisitation)
    assert isinstance(models["linear"], Ease) and isinstance(models["factors"], Ials)


def test_a_large_catalogue_never_fits_ials_twice(history, monkeypatch) -> None:
    fits = []
    original = Ials.fit

    def counted(*args, **kwargs):
        fits.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(stack_module.Ials, "fit", counted)
    settings = CandidatesConfig(
        sources=("linear", "factors", "graph_filter"),
        ease={"max_items": 10},
        ials={"iterations": 2},
        graph_filter={"factors": 8},
    )
    models = fit_candidate_models(history, settings, history["ts"].max())
    # Above ease.max_items `linear` is iALS: `factors` would be the same model again.
    assert isinstance(models["linear"], Ials) and "factors" not in models
    assert isinstance(models["graph_filter"], GraphFilter)
    assert len(fits) == 1
