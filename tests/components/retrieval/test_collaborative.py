import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from components.config import (
    BaselinesConfig,
    CovisitationConfig,
    EaseConfig,
    IalsConfig,
    load_config,
)
from components.data.sources import load_source
from components.data.split import split_tables
from components.evaluation.baselines import fit_baselines
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer
from components.retrieval.covisitation import Covisitation, covisitation_matrix, session_ids
from components.retrieval.ease import Ease, dense_gram
from components.retrieval.ials import Ials
from components.retrieval.linear_baseline import fit_linear_baseline
from components.retrieval.popularity import RecentPopularity
from tests.conftest import REPO_ROOT, make_tables, needs_ml1m_lcfn

AS_OF = pd.Timestamp("2026-02-01T00:00:00Z")


def _untimed(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    frame = make_tables([(u, i, "2026-01-01T00:00:00Z", "interaction") for u, i in pairs])
    return frame.interactions.assign(ts=pd.NaT)


# ------------------------------------------------------------------------- EASE


def test_ease_matches_the_closed_form_on_a_toy_matrix():
    X = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1], [1, 0, 0, 1]], float)
    users, items = ["u0", "u1", "u2", "u3", "u4"], ["i0", "i1", "i2", "i3"]
    pairs = [(users[u], items[i]) for u, i in zip(*np.nonzero(X), strict=True)]
    l2 = 2.0
    P = np.linalg.inv(X.T @ X + l2 * np.eye(4))
    B = np.eye(4) - P / np.diag(P)[None, :]  # B_ij = -P_ij / P_jj off the diagonal
    assert np.allclose(np.diag(B), 0.0)

    model = Ease.fit(_untimed(pairs), EaseConfig(l2=l2))

    np.testing.assert_allclose(model.weights, B, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.score(users, items), X @ B, rtol=1e-5, atol=1e-6)


def test_the_gram_matrix_is_built_in_column_blocks_in_fortran_order(monkeypatch):
    """Blocks of item columns give X^T X + l2 I exactly, laid out for an in-place inverse."""
    from components.retrieval import ease

    rng = np.random.default_rng(3)
    matrix = sp.random(60, 23, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    matrix.data[:] = 1.0
    expected = (matrix.T @ matrix).toarray().astype(np.float64) + 2.5 * np.eye(23)
    monkeypatch.setattr(ease, "GRAM_BLOCK_CELLS", 23 * 4)  # blocks of 4 columns
    gram = dense_gram(matrix, 2.5)
    np.testing.assert_array_equal(gram, expected)
    assert gram.flags.f_contiguous and gram.dtype == np.float64


def test_ease_refuses_a_catalogue_above_max_items_and_names_the_setting():
    pairs = [(f"u{n % 3}", f"i{n}") for n in range(11)]
    with pytest.raises(ValueError, match=r"11 items.*ease\.max_items = 10.*iALS"):
        Ease.fit(_untimed(pairs), EaseConfig(max_items=10))


@pytest.mark.parametrize(("n_items", "expected"), [(10, Ease), (11, Ials)])
def test_linear_baseline_is_ease_up_to_max_items_then_ials(n_items, expected):
    pairs = [(f"u{n % 4}", f"i{n}") for n in range(n_items)] + [("u9", "i0"), ("u9", "i1")]
    config = BaselinesConfig(
        ease=EaseConfig(max_items=10), ials=IalsConfig(factors=2, iterations=2)
    )
    model = fit_linear_baseline(_untimed(pairs), config, None)
    assert type(model) is expected
    assert model.name == {Ease: "ease", Ials: "ials"}[expected]


def test_linear_switch_counts_only_items_before_as_of():
    events = [(f"u{n % 4}", f"i{n}", "2026-01-10T00:00:00Z", "view") for n in range(10)]
    events.append(("u1", "late", "2026-02-01T00:00:00Z", "view"))  # at as_of: not history
    interactions = make_tables(events).interactions
    model = fit_linear_baseline(interactions, BaselinesConfig(ease=EaseConfig(max_items=10)), AS_OF)
    assert model.name == "ease"


def test_fit_baselines_builds_each_enabled_baseline_under_its_name():
    events = [
        ("u1", "a", "2026-01-10T10:00:00Z", "view"),
        ("u1", "b", "2026-01-10T10:01:00Z", "view"),
        ("u2", "a", "2026-01-11T10:00:00Z", "view"),
    ]
    interactions = make_tables(events).interactions
    baselines = fit_baselines(interactions, BaselinesConfig(), AS_OF)
    assert set(baselines) == {"popularity", "covisitation", "ease"}
    assert isinstance(baselines["popularity"], RecentPopularity)
    assert isinstance(baselines["covisitation"], Covisitation)
    only = fit_baselines(interactions, BaselinesConfig(enabled=("covisitation",)), AS_OF)
    assert list(only) == ["covisitation"]


@needs_ml1m_lcfn
@pytest.mark.needs_shared_data
def test_ease_reproduces_the_ml1m_lcfn_anchor():
    """EVALUATION.md: plain EASE (l2 500) fitted on train.txt only: .2759 / .2660 on test."""
    config = load_config(REPO_ROOT / "configs" / "ml-1m-lcfn.yaml")
    split = split_tables(load_source(config.source), config.split)
    task = build_evaluation_task(split, "test", config.evaluation)
    model = Ease.fit(split.history("test"), config.evaluation.baselines.ease)
    metrics = evaluate_scorer(model, task, (20,)).metrics
    assert metrics["recall@20"] == pytest.approx(0.2759, abs=0.003)
    assert metrics["ndcg@20"] == pytest.approx(0.2660, abs=0.003)


# ------------------------------------------------------------------------- co-visitation


def test_covisitation_counts_pairs_per_session_cosine_normalised():
    # Sessions {a, b}, {a, b, c}, {b, c}; items a=0, b=1, c=2.
    sessions = np.array([0, 0, 1, 1, 1, 2, 2])
    items = np.array([0, 1, 0, 1, 2, 1, 2])
    similarity = covisitation_matrix(sessions, items, np.ones(7), 3).toarray()
    counts = np.array([[0, 2, 1], [2, 0, 2], [1, 2, 0]], float)
    sessions_per_item = np.array([2, 3, 2], float)
    expected = counts / np.sqrt(np.outer(sessions_per_item, sessions_per_item))
    np.testing.assert_allclose(similarity, expected, rtol=1e-6)


def test_covisitation_takes_the_strongest_event_of_an_item_in_a_session():
    # One session: a viewed three times and bought (weight 5), b viewed once (weight 1).
    sessions = np.zeros(5, dtype=np.int64)
    items = np.array([0, 0, 0, 0, 1])
    weights = np.array([1.0, 1.0, 1.0, 5.0, 1.0])
    similarity = covisitation_matrix(sessions, items, weights, 2).toarray()
    # S = [5, 1]: C_ab = 5, n_a = 25, n_b = 1 -> 5 / sqrt(25 * 1) = 1.
    np.testing.assert_allclose(similarity, [[0.0, 1.0], [1.0, 0.0]])


def test_a_new_session_starts_only_where_the_gap_exceeds_session_gap():
    events = [
        ("u1", "a", "2026-01-10T10:00:00Z", "view"),
        ("u1", "b", "2026-01-10T10:30:00Z", "view"),  # exactly 30 min: same session
        ("u1", "c", "2026-01-10T11:00:01Z", "view"),  # 30 min 1 s: new session
        ("u2", "a", "2026-01-10T10:10:00Z", "view"),  # another user: new session
        ("u1", "d", "2026-01-10T09:59:00Z", "view"),  # rows need not be sorted
    ]
    ids = session_ids(make_tables(events).interactions, "30min")  # aligned to the rows
    u1_d, u1_a, u1_b, u1_c, u2_a = ids[4], ids[0], ids[1], ids[2], ids[3]
    assert u1_d == u1_a == u1_b
    assert len({u1_a, u1_c, u2_a}) == 3


def test_without_timestamps_a_users_history_is_one_session():
    frame = _untimed([("u1", "a"), ("u2", "a"), ("u1", "b"), ("u1", "c")])
    ids = session_ids(frame, "30min")
    assert ids[0] == ids[2] == ids[3] != ids[1]


def test_covisitation_links_items_of_a_session_and_not_across_sessions():
    events = [
        ("u1", "a", "2026-01-20T10:00:00Z", "view"),
        ("u1", "b", "2026-01-20T10:10:00Z", "view"),
        ("u1", "c", "2026-01-20T14:00:00Z", "view"),  # hours later: its own session
        ("u2", "b", "2026-01-21T10:00:00Z", "view"),
    ]
    model = Covisitation.fit(make_tables(events).interactions, CovisitationConfig(), AS_OF)
    similarity = pd.DataFrame(
        sp.csr_matrix(model.similarity).toarray(),
        index=model.item_index,
        columns=model.item_index,
    )
    assert similarity.loc["a", "b"] > 0
    assert similarity.loc["a", "c"] == similarity.loc["b", "c"] == 0


def test_covisitation_ignores_sessions_outside_the_window():
    events = [
        ("u1", "a", "2025-12-01T10:00:00Z", "view"),  # long before the 28-day window
        ("u1", "b", "2025-12-01T10:05:00Z", "view"),
        ("u2", "a", "2026-01-25T10:00:00Z", "view"),
        ("u2", "c", "2026-01-25T10:05:00Z", "view"),
        ("q", "a", "2026-01-30T10:00:00Z", "view"),
    ]
    interactions = make_tables(events).interactions
    windowed = Covisitation.fit(interactions, CovisitationConfig(window="28D"), AS_OF)
    everything = Covisitation.fit(interactions, CovisitationConfig(window=None), AS_OF)
    b_and_c_windowed = windowed.score(["q"], ["b", "c"])[0]
    b_and_c_everything = everything.score(["q"], ["b", "c"])[0]
    assert b_and_c_windowed[1] > b_and_c_windowed[0]
    assert b_and_c_everything[0] == pytest.approx(b_and_c_everything[1])


def test_covisitation_seeds_only_the_users_most_recent_items():
    events = [
        ("u1", "old", "2026-01-20T10:00:00Z", "view"),
        ("u1", "x", "2026-01-20T10:05:00Z", "view"),
        ("u2", "new", "2026-01-21T10:00:00Z", "view"),
        ("u2", "y", "2026-01-21T10:05:00Z", "view"),
        ("q", "old", "2026-01-25T10:00:00Z", "view"),
        ("q", "new", "2026-01-26T10:00:00Z", "view"),
    ]
    interactions = make_tables(events).interactions
    model = Covisitation.fit(interactions, CovisitationConfig(recent_items=1), AS_OF)
    x, y = model.score(["q"], ["x", "y"])[0]
    assert y > x  # only `new` (q's latest item) seeds q's scores
