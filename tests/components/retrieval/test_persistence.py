"""Fitted retrieval models survive a save / load in native formats with identical scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.config import (
    BaselinesConfig,
    GraphFilterConfig,
    SplitConfig,
    SyntheticSourceConfig,
)
from components.data.split import split_tables
from components.data.synthetic import generate_marketplace
from components.retrieval.covisitation import Covisitation
from components.retrieval.ease import Ease
from components.retrieval.graph_filter import GraphFilter
from components.retrieval.ials import Ials
from components.retrieval.persistence import load_model, save_model
from components.retrieval.popularity import RecentPopularity


@pytest.fixture(scope="module")
def history():
    tables = generate_marketplace(SyntheticSourceConfig(n_users=150, n_days=14)).tables
    split = split_tables(tables, SplitConfig(valid_duration="3D", test_duration="3D"))
    return split.history("test"), split.test_cutoff


@pytest.mark.parametrize("kind", ["covisitation", "ease", "graph_filter", "ials", "popularity"])
def test_saved_models_score_exactly_like_the_fitted_ones(history, kind: str, tmp_path: Path):
    frame, cutoff = history
    config = BaselinesConfig()
    model = {
        "covisitation": lambda: Covisitation.fit(frame, config.covisitation, cutoff),
        "ease": lambda: Ease.fit(frame, config.ease, cutoff),
        "graph_filter": lambda: GraphFilter.fit(frame, GraphFilterConfig(factors=16), cutoff),
        "ials": lambda: Ials.fit(frame, config.ials, cutoff),
        "popularity": lambda: RecentPopularity.fit(frame, config.popularity, cutoff),
    }[kind]()
    save_model(model, tmp_path / kind)
    loaded = load_model(tmp_path / kind)
    assert type(loaded) is type(model)
    users = [*frame["user_id"].drop_duplicates().astype(str).tolist()[:20], "nobody"]
    items = [*frame["item_id"].drop_duplicates().astype(str).tolist()[:300], "no-item"]
    np.testing.assert_array_equal(loaded.score(users, items), model.score(users, items))
    if kind == "ease":
        assert loaded.weights.flags["C_CONTIGUOUS"]


def test_unknown_objects_and_formats_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot save a dict"):
        save_model({}, tmp_path / "x")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "model.json").write_text('{"format": 99, "class": "Ease"}')
    with pytest.raises(ValueError, match="retrain to rebuild it"):
        load_model(tmp_path / "y")
