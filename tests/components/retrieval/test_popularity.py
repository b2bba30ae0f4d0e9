import numpy as np
import pandas as pd

from components.config import PopularityConfig
from components.retrieval.popularity import RecentPopularity
from tests.conftest import make_tables

EVENTS = [
    ("u1", "old", "2026-01-01T00:00:00Z", "purchase"),
    ("u2", "old", "2026-01-01T00:00:00Z", "purchase"),
    ("u1", "a", "2026-01-19T00:00:00Z", "view"),
    ("u2", "a", "2026-01-19T00:00:00Z", "view"),
    ("u3", "b", "2026-01-19T12:00:00Z", "add_to_bag"),
    ("u3", "future", "2026-01-25T00:00:00Z", "purchase"),
]


def test_counts_only_the_window_before_as_of_with_event_weights():
    interactions = make_tables(EVENTS).interactions
    config = PopularityConfig(window="7D", half_life=None)
    model = RecentPopularity.fit(interactions, config, pd.Timestamp("2026-01-20T00:00:00Z"))
    scores = dict(zip(model.item_ids, model.scores, strict=True))
    assert scores == {"b": 4.0, "a": 2.0}  # add_to_bag weighs 4, views 1 each


def test_decay_halves_weight_per_half_life():
    interactions = make_tables(EVENTS).interactions
    config = PopularityConfig(window="30D", half_life="1D", event_weights={})
    model = RecentPopularity.fit(interactions, config, pd.Timestamp("2026-01-20T00:00:00Z"))
    scores = dict(zip(model.item_ids, model.scores, strict=True))
    assert scores["a"] == np.float64(2 * 0.5)
    assert scores["b"] == np.float64(0.5**0.5)


def test_score_is_aligned_to_requested_items_and_unseen_items_score_zero(tmp_path):
    interactions = make_tables(EVENTS).interactions
    model = RecentPopularity.fit(interactions, PopularityConfig(window="7D", half_life=None))
    matrix = model.score(["u1", "u9"], ["future", "nope", "b"])
    assert matrix.shape == (2, 3)
    np.testing.assert_array_equal(matrix[1], [5.0, 0.0, 4.0])
    model.save(tmp_path)
    reloaded = RecentPopularity.load(tmp_path)
    np.testing.assert_array_equal(reloaded.score(["u1"], ["b"]), model.score(["u1"], ["b"]))
    assert reloaded.as_of == model.as_of
