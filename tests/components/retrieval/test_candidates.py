"""One contract every candidate source honours, then the merge, recall and wiring.

The hand-made marketplace: five tops, three shoes and two bags are on sale at the cut-off;
`sold` (sold before it), `future` (listed after it) and `blocked` (moderated) are popular
or close to users but must never come back; each of u1, u3 and u5 bought one item, which
must not come back to them; `cold` has no history at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from components.config import (
    AnnoyConfig,
    CandidatesConfig,
    CovisitationConfig,
    EaseConfig,
    PopularityConfig,
)
from components.data.split import available_at
from components.interfaces import CandidateSource
from components.retrieval.ann_index import AnnIndex
from components.retrieval.candidate_arrays import CANDIDATE_COLUMNS
from components.retrieval.candidate_filters import CandidateFilter, build_exclusions
from components.retrieval.candidate_merge import (
    generate_candidates,
    merge_candidate_arrays,
    merge_candidates,
    run_source_arrays,
    run_sources,
)
from components.retrieval.candidate_recall import candidate_recall
from components.retrieval.candidate_sources import (
    AnnSource,
    CategoryPopularitySource,
    ScorerSource,
    top_n,
)
from components.retrieval.covisitation import Covisitation
from components.retrieval.ease import Ease
from components.retrieval.popularity import RecentPopularity
from tests.conftest import make_tables

AS_OF = pd.Timestamp("2026-01-20T00:00:00Z")
LISTED = "2026-01-01T00:00:00Z"
CATEGORIES = {
    **{f"t{n}": "tops" for n in range(1, 6)},
    **{f"s{n}": "shoes" for n in range(1, 4)},
    "b1": "bags",
    "b2": "bags",
    "sold": "tops",
    "future": "tops",
    "blocked": "tops",
}
ITEMS = {
    item: {
        "category": category,
        "created_at": "2026-01-21T00:00:00Z" if item == "future" else LISTED,
        "sold_at": "2026-01-18T00:00:00Z" if item == "sold" else None,
    }
    for item, category in CATEGORIES.items()
}
#: Per user: (day of January, items viewed in one session, item bought at its end).
SESSIONS = {
    "u1": [(10, ["t1", "t2", "s1", "sold"], "t2"), (15, ["blocked", "t3"], None)],
    "u2": [(11, ["t1", "t3", "blocked"], None), (16, ["s2", "sold"], None)],
    "u3": [(12, ["s1", "s2", "s3", "b1"], "s3"), (17, ["sold", "blocked"], None)],
    "u4": [(13, ["b1", "b2", "t4", "sold"], None)],
    "u5": [(14, ["t1", "t2", "t5", "blocked", "sold"], "t1"), (18, ["t4"], None)],
    "u6": [(15, ["s1", "b2", "t3", "blocked"], None)],
}
BOUGHT = {"u1": {"t2"}, "u3": {"s3"}, "u5": {"t1"}}
NEVER = {"sold", "future", "blocked"}
USERS = ["u1", "u2", "u3", "u5", "cold"]
SOURCES = ["two_tower", "covisitation", "linear", "popularity", "category_popularity"]


def _events() -> list[tuple[str, str, str, str]]:
    events = []
    for user, sessions in SESSIONS.items():
        for day, viewed, bought in sessions:
            for minute, item in enumerate(viewed):
                events.append((user, item, f"2026-01-{day}T10:{minute:02d}:00Z", "view"))
            if bought:
                events.append((user, bought, f"2026-01-{day}T10:30:00Z", "purchase"))
    return events


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, pd.DataFrame, CandidateFilter]:
    tables = make_tables(_events(), ITEMS)
    config = CandidatesConfig(blocked_item_ids=("blocked",))
    available = available_at(tables.items, AS_OF)
    filters = CandidateFilter.from_tables(
        tables.interactions, tables.items, available, config, ("purchase",)
    )
    return tables.interactions, tables.items, filters


def _item_vectors(item_ids: Sequence[str]) -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.standard_normal((len(item_ids), 8)).astype(np.float32)


def _fake_user_vectors(
    history: pd.DataFrame, item_ids: list[str]
) -> Callable[[Sequence[str]], np.ndarray]:
    """Mean vector of the user's history (bought and sold items included): the nearest
    items are exactly the ones the filter must drop. Unknown users get a zero vector."""
    vectors = _item_vectors(item_ids)
    position = {item: n for n, item in enumerate(item_ids)}
    seen = history.groupby("user_id")["item_id"].agg(list).to_dict()

    def user_vectors(user_ids: Sequence[str]) -> np.ndarray:
        rows = [
            vectors[[position[i] for i in seen[u]]].mean(axis=0) if u in seen else np.zeros(8)
            for u in user_ids
        ]
        return np.asarray(rows, dtype=np.float32)

    return user_vectors


def make_source(
    name: str, history: pd.DataFrame, items: pd.DataFrame, filters: CandidateFilter
) -> CandidateSource:
    item_ids = list(items["item_id"].astype(str))
    popularity = RecentPopularity.fit(
        history, PopularityConfig(window="365D", half_life=None), AS_OF
    )
    if name == "two_tower":
        # Every listing is indexed, sold / future / blocked too: the filter must catch them.
        index = AnnIndex.build(
            _item_vectors(item_ids), item_ids, AnnoyConfig(n_trees=5, search_k=10_000)
        )
        return AnnSource(_fake_user_vectors(history, item_ids), index, filters)
    if name == "covisitation":
        return ScorerSource(
            name, Covisitation.fit(history, CovisitationConfig(), AS_OF), item_ids, filters
        )
    if name == "linear":
        return ScorerSource(name, Ease.fit(history, EaseConfig(l2=1.0), AS_OF), item_ids, filters)
    if name == "popularity":
        return ScorerSource(name, popularity, item_ids, filters)
    return CategoryPopularitySource.fit(
        history, items, popularity, CandidatesConfig(top_categories=2), filters, AS_OF
    )


@pytest.fixture(params=SOURCES)
def source(
    request: pytest.FixtureRequest, world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter]
) -> CandidateSource:
    return make_source(request.param, *world)


# ------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("n", [1, 3, 50])
def test_source_returns_the_candidate_columns_and_at_most_n_per_user(
    source: CandidateSource, n: int
) -> None:
    frame = source.candidates(USERS, n)

    assert tuple(frame.columns) == CANDIDATE_COLUMNS
    assert frame["score"].dtype == np.float64 and frame["rank"].dtype == np.int64
    assert frame.groupby("user_id").size().max() <= n
    assert not frame.duplicated(["user_id", "item_id"]).any()


@pytest.mark.parametrize("n", [3, 50])
def test_source_ranks_run_from_one_with_non_increasing_scores(
    source: CandidateSource, n: int
) -> None:
    frame = source.candidates(USERS, n)

    for _, group in frame.groupby("user_id"):
        assert list(group["rank"]) == list(range(1, len(group) + 1))
        assert np.all(np.diff(group["score"].to_numpy()) <= 1e-9)


def test_source_never_returns_bought_sold_unlisted_or_blocked_items(
    source: CandidateSource,
) -> None:
    frame = source.candidates(USERS, 50)  # more than the catalogue: everything allowed

    assert not set(frame["item_id"]) & NEVER
    for user, bought in BOUGHT.items():
        assert not set(frame.loc[frame["user_id"] == user, "item_id"]) & bought
    assert len(frame[frame["user_id"] == "u1"]) > 0


def test_source_answers_only_the_users_asked_in_their_order(source: CandidateSource) -> None:
    frame = source.candidates(["u5", "u1", "u5", "nobody"], 3)

    users = list(pd.unique(frame["user_id"]))
    assert users == [u for u in ["u5", "u1", "nobody"] if u in users]
    assert {"u5", "u1"} <= set(users)


def test_source_is_deterministic(
    source: CandidateSource, world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter]
) -> None:
    first = source.candidates(USERS, 4)
    again = source.candidates(USERS, 4)
    rebuilt = make_source(source.name, *world).candidates(USERS, 4)

    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, rebuilt)


def test_the_world_would_leak_without_the_filter(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter],
) -> None:
    history, items, _ = world
    unfiltered = make_source("popularity", history, items, CandidateFilter())

    frame = unfiltered.candidates(USERS, 50)

    assert {"sold", "future", "blocked"} <= set(frame["item_id"])
    assert "t2" in set(frame.loc[frame["user_id"] == "u1", "item_id"])


# ------------------------------------------------------------------------- source specifics


def test_category_slots_follow_affinity_and_overflow_to_other_categories(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter],
) -> None:
    _, items, filters = world
    history = make_tables(
        [
            ("fan", item, f"2026-01-1{n}T10:00:00Z", "view")
            for n, item in enumerate(["t1", "t2", "t3", "s1"])
        ],
        ITEMS,
    ).interactions
    popularity = RecentPopularity.fit(history, PopularityConfig(event_weights={}), AS_OF)
    config = CandidatesConfig(top_categories=2, affinity_half_life=None)
    source = CategoryPopularitySource.fit(history, items, popularity, config, filters, AS_OF)
    category = items.set_index("item_id")["category"]

    four = source.candidates(["fan"], 4)
    eight = source.candidates(["fan"], 8)

    assert list(category[four["item_id"]].value_counts().sort_index()) == [1, 3]  # shoes, tops
    # 6 tops wanted but only 5 are on sale: the extra slot goes to shoes.
    assert category[eight["item_id"]].value_counts().to_dict() == {"tops": 5, "shoes": 3}
    assert four["score"].iloc[0] == pytest.approx(0.75)  # top tops item: share 3/4 x 1


def test_category_popularity_gives_no_rows_to_users_without_history(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter],
) -> None:
    source = make_source("category_popularity", *world)

    assert source.candidates(["cold"], 5).empty


def test_ann_source_queries_deeper_when_the_nearest_items_are_forbidden() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 6)).astype(np.float32)
    vectors[:30] = vectors[0] + 0.01 * rng.standard_normal((30, 6))  # a sold-out cluster
    item_ids = [f"i{n:02d}" for n in range(40)]
    index = AnnIndex.build(vectors, item_ids, AnnoyConfig(n_trees=5, search_k=10_000))
    filters = CandidateFilter(available=frozenset(item_ids[30:]))
    source = AnnSource(lambda users: np.repeat(vectors[:1], len(users), axis=0), index, filters)

    frame = source.candidates(["u"], 5)

    assert len(frame) == 5 and set(frame["item_id"]) <= set(item_ids[30:])


def test_ann_source_refuses_a_vector_count_that_does_not_match_the_users() -> None:
    index = AnnIndex.build(np.eye(3, dtype=np.float32), ["a", "b", "c"], AnnoyConfig(n_trees=1))
    source = AnnSource(lambda users: np.ones((1, 3)), index)

    with pytest.raises(ValueError, match="1 rows for 2 users"):
        source.candidates(["u1", "u2"], 2)


def test_exclusions_are_purchases_or_the_whole_history(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter],
) -> None:
    history, _, _ = world

    purchases = build_exclusions(history, ("purchase",))
    everything = build_exclusions(history, None)

    assert purchases == {user: frozenset(items) for user, items in BOUGHT.items()}
    assert everything["u4"] == frozenset({"b1", "b2", "t4", "sold"})


def test_top_n_sorts_breaks_ties_by_position_and_pads_forbidden_items() -> None:
    scores = np.array([[0.1, 0.5, -np.inf, 0.5, np.nan], [1.0, -np.inf, -np.inf, -np.inf, 2.0]])

    top, values = top_n(scores, 3)

    np.testing.assert_array_equal(top, [[1, 3, 0], [4, 0, -1]])
    np.testing.assert_array_equal(values[1, :2], [2.0, 1.0])


# ------------------------------------------------------------------------- merge


def frame(user: str, items: list[str], scores: list[float] | None = None) -> pd.DataFrame:
    scores = scores if scores is not None else [float(len(items) - n) for n in range(len(items))]
    return pd.DataFrame(
        {
            "user_id": [user] * len(items),
            "item_id": items,
            "score": scores,
            "rank": list(range(1, len(items) + 1)),
        }
    )


def test_merge_keeps_one_row_per_pair_with_each_sources_score_and_rank() -> None:
    frames = {
        "a": frame("u", ["x", "y", "z"], [0.9, 0.8, 0.7]),
        "b": frame("u", ["y", "w"], [12.0, 3.0]),
    }

    merged = merge_candidates(frames, n=10)

    assert list(merged.columns) == [
        "user_id", "item_id", "score", "rank", "n_sources",
        "score_a", "rank_a", "score_b", "rank_b",
    ]  # fmt: skip
    assert len(merged) == 4 and not merged.duplicated(["user_id", "item_id"]).any()
    y = merged.set_index("item_id").loc["y"]
    assert (y["score_a"], y["rank_a"], y["score_b"], y["rank_b"]) == (0.8, 2, 12.0, 1)
    assert y["n_sources"] == 2
    assert np.isnan(merged.set_index("item_id").loc["x", "rank_b"])


def test_merge_orders_by_reciprocal_rank_fusion_and_truncates() -> None:
    frames = {
        "a": frame("u", ["x", "y", "z"]),
        "b": frame("u", ["y", "w"]),
        "c": frame("v", ["p", "q"]),
    }

    merged = merge_candidates(frames, n=3, rrf_k=60)

    u = merged[merged["user_id"] == "u"]
    # y: 1/62 + 1/61; x: 1/61; w: 1/62 (tie with... none); z: 1/63 is cut at n=3.
    assert list(u["item_id"]) == ["y", "x", "w"]
    assert list(u["rank"]) == [1, 2, 3]
    np.testing.assert_allclose(u["score"], [1 / 62 + 1 / 61, 1 / 61, 1 / 62])
    assert list(merged["user_id"]) == ["u", "u", "u", "v", "v"]


def test_merge_breaks_ties_by_the_earlier_source_and_applies_weights() -> None:
    frames = {"a": frame("u", ["x"]), "b": frame("u", ["y"])}

    assert list(merge_candidates(frames, n=2)["item_id"]) == ["x", "y"]
    weighted = merge_candidates(frames, n=2, weights={"a": 0.5})
    assert list(weighted["item_id"]) == ["y", "x"]
    with pytest.raises(ValueError, match=">= 0"):
        merge_candidates(frames, n=2, weights={"a": -1.0})


def test_merge_applies_the_filter_again(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter],
) -> None:
    _, _, filters = world
    leaky = {"stale": frame("u1", ["sold", "t2", "t3", "blocked"])}

    merged = merge_candidates(leaky, n=10, filters=filters)

    assert list(merged["item_id"]) == ["t3"] and list(merged["rank"]) == [1]


def test_merge_of_nothing_is_an_empty_frame_with_the_columns() -> None:
    merged = merge_candidates({"a": frame("u", [])}, n=5)

    assert merged.empty and {"rank_a", "score_a", "n_sources"} <= set(merged.columns)


# ------------------------------------------------------------------------- recall, wiring


def test_candidate_recall_is_hits_over_positives_averaged_over_users() -> None:
    positives = pd.DataFrame(
        {"user_id": ["u1", "u1", "u2", "u3", "u1"], "item_id": ["a", "b", "c", "d", "a"]}
    )
    merged = merge_candidates(
        {"s": frame("u1", ["a", "z", "b"]), "t": frame("u2", ["e", "c"])}, n=10
    )

    at_2 = candidate_recall(merged, positives, n=2)
    at_3 = candidate_recall(merged, positives, n=3)

    # u1: a at 1, b at 3 (of 2 positives); u2: c at 2 (of 1); u3 has no candidates.
    assert at_2 == pytest.approx({"s": (1 / 2) / 3, "t": (1 / 1) / 3, "combined": 1.5 / 3})
    assert at_3["combined"] == pytest.approx((1 + 1 + 0) / 3)
    assert at_3["s"] == pytest.approx(1 / 3)


def test_candidate_recall_per_source_uses_the_sources_own_lists_when_given() -> None:
    positives = pd.DataFrame({"user_id": ["u"], "item_id": ["late"]})
    own = {"a": frame("u", ["x", "late"]), "b": frame("u", ["y"])}
    merged = merge_candidates(own, n=2)  # "late" is cut by the merge

    recall = candidate_recall(merged, positives, n=2, sources=own)

    assert recall == {"a": 1.0, "b": 0.0, "combined": 0.0}


def test_candidate_recall_counts_the_same_from_arrays_as_from_frames(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter],
) -> None:
    """The candidates stage counts recall on the arrays it merged (no frames built just to
    count): the same figures as from frames, per source and combined."""
    history, items, filters = world
    sources = [make_source(name, history, items, filters) for name in SOURCES]
    hits = run_source_arrays(sources, USERS, 4)
    merged = merge_candidate_arrays(hits, 5, filters=filters)
    positives = history[["user_id", "item_id"]].sample(frac=0.5, random_state=0)
    frames = {name: arrays.frame() for name, arrays in hits.items()}

    from_arrays = candidate_recall(merged, positives, n=3, sources=hits)
    from_frames = candidate_recall(merged.frame(), positives, n=3, sources=frames)
    merged_only = candidate_recall(merged, positives, n=3)

    assert from_arrays == from_frames and set(from_arrays) == {*SOURCES, "combined"}
    assert merged_only == candidate_recall(merged.frame(), positives, n=3)
    assert 0 < from_arrays["combined"] < 1


def test_generate_candidates_runs_every_source_and_drops_configured_blocks(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter],
) -> None:
    history, items, filters = world
    sources = [make_source(name, history, items, filters) for name in SOURCES]
    config = CandidatesConfig(per_source=4, n=6, blocked_item_ids=("t3",))

    merged = generate_candidates(sources, USERS, config, filters=filters)

    assert merged.groupby("user_id").size().max() == 6
    assert not set(merged["item_id"]) & (NEVER | {"t3"})
    assert {f"rank_{name}" for name in SOURCES} <= set(merged.columns)
    assert merged[[f"rank_{name}" for name in SOURCES]].max().max() <= 4


def test_sources_must_have_unique_names(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter],
) -> None:
    popularity = make_source("popularity", *world)

    with pytest.raises(ValueError, match="unique names"):
        run_sources([popularity, popularity], USERS, 3)


def test_ann_source_answers_a_user_the_same_in_any_batch() -> None:
    """Each user is searched to their own depth: a heavy user in the batch (many
    exclusions) changes nobody else's answer."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((400, 8)).astype(np.float32)
    item_ids = [f"i{n:03d}" for n in range(400)]
    index = AnnIndex.build(vectors, item_ids, AnnoyConfig(n_trees=4, search_k_factor=1.0))
    user_vectors = {f"u{n}": rng.standard_normal(8).astype(np.float32) for n in range(6)}
    filters = CandidateFilter(exclude={"u0": frozenset(item_ids[:300])})
    source = AnnSource(lambda users: np.vstack([user_vectors[u] for u in users]), index, filters)

    together = source.candidates(list(user_vectors), 20)

    for user in user_vectors:
        alone = source.candidates([user], 20)
        mine = together[together["user_id"] == user].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, alone)
    assert not set(together.loc[together["user_id"] == "u0", "item_id"]) & set(item_ids[:300])


class _EveryUserScored:
    """A scorer that hides `item_scores`: ScorerSource ranks its full score matrix."""

    def __init__(self, model: RecentPopularity) -> None:
        self.model = model

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        return self.model.score(user_ids, item_ids)


@pytest.mark.parametrize("n", [1, 3, 50])
def test_a_user_independent_scorer_gives_the_full_ranking_lists_from_its_shared_order(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter], n: int
) -> None:
    history, items, filters = world
    item_ids = list(items["item_id"].astype(str))
    popularity = RecentPopularity.fit(
        history, PopularityConfig(window="365D", half_life=None), AS_OF
    )
    users = [*sorted(history["user_id"].astype(str).unique()), "nobody"]
    shared = ScorerSource("popularity", popularity, item_ids, filters, batch_size=2)
    full = ScorerSource("popularity", _EveryUserScored(popularity), item_ids, filters)
    assert shared._shared_order is not None and full._shared_order is None

    fast, reference = shared.candidates(users, n), full.candidates(users, n)

    # The same users, ranks and scores; the same items except among those tied at a
    # user's last kept score (the full top-n breaks that tie by selection, not position).
    columns = ["user_id", "rank", "score"]
    pd.testing.assert_frame_equal(fast[columns], reference[columns])
    last = fast.groupby("user_id")["score"].transform("min")
    above = fast["score"] > last
    assert fast.loc[above, "item_id"].tolist() == reference.loc[above, "item_id"].tolist()
    assert (fast.groupby("user_id").size() <= n).all()
    assert filters.keep(fast["user_id"], fast["item_id"]).all()


class _DenseScored:
    """A co-visitation scorer without `sparse_scores`: ScorerSource ranks its full scores."""

    def __init__(self, model: Covisitation) -> None:
        self.model = model

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        return self.model.score(user_ids, item_ids)


@pytest.mark.parametrize("n", [1, 2, 4, 50])
def test_co_visitation_ranked_from_its_sparse_scores_gives_the_full_ranking_lists(
    world: tuple[pd.DataFrame, pd.DataFrame, CandidateFilter], n: int
) -> None:
    import scipy.sparse as sp

    history, items, filters = world
    item_ids = list(items["item_id"].astype(str))
    model = Covisitation.fit(history, CovisitationConfig(), AS_OF)
    sparse_model = replace(model, similarity=sp.csr_matrix(model.similarity))
    users = [*sorted(history["user_id"].astype(str).unique()), "nobody"]
    scores = sparse_model.score(users, item_ids)
    matrix, fallback, scale = sparse_model.sparse_scores(users, item_ids)
    # the two parts are the scores: co-visited cells, else the scaled fallback
    rebuilt = np.where(matrix.toarray() > 0, matrix.toarray(), fallback[None, :] * scale[:, None])
    np.testing.assert_array_equal(rebuilt, scores)

    fast = ScorerSource("covisitation", sparse_model, item_ids, filters, batch_size=2)
    full = ScorerSource("covisitation", _DenseScored(sparse_model), item_ids, filters)
    got, reference = fast.candidates(users, n), full.candidates(users, n)

    columns = ["user_id", "rank", "score"]
    pd.testing.assert_frame_equal(got[columns], reference[columns])
    last = got.groupby("user_id")["score"].transform("min")
    above = got["score"] > last
    assert got.loc[above, "item_id"].tolist() == reference.loc[above, "item_id"].tolist()
    assert filters.keep(got["user_id"], got["item_id"]).all()
