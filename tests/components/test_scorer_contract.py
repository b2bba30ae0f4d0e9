"""One contract every baseline scorer honours (as benfred/implicit's recommender_base_test).

Each factory fits a scorer on a small hand-made marketplace: users who view `a` also view
`b` in the same session, users who view `c` also view `d`, everybody views the popular `p`
on another day, and `c` is also viewed alone: more popular than `b`, but never with `a`
in a session. The query user `q` has viewed only `a` and `p`: personal models must put
`b` first, popularity puts `c` first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from components.config import (
    CovisitationConfig,
    EaseConfig,
    GraphFilterConfig,
    IalsConfig,
    PopularityConfig,
)
from components.interfaces import Scorer
from components.retrieval.collaborative import Covisitation, Ease, Ials
from components.retrieval.graph_filter import GraphFilter
from components.retrieval.popularity import RecentPopularity
from tests.conftest import make_tables

AS_OF = pd.Timestamp("2026-01-20T00:00:00Z")
ITEMS = ["a", "b", "c", "d", "e", "p"]


def _toy_events() -> list[tuple[str, str, str, str]]:
    events = []
    for n in range(1, 9):
        first, second = ("a", "b") if n <= 4 else ("c", "d")
        events += [
            (f"u{n}", first, f"2026-01-1{n % 4 + 1}T10:00:00Z", "view"),
            (f"u{n}", second, f"2026-01-1{n % 4 + 1}T10:05:00Z", "view"),
            (f"u{n}", "p", "2026-01-18T20:00:00Z", "view"),
        ]
    events += [
        ("u1", "e", "2026-01-16T08:00:00Z", "view"),
        ("u5", "e", "2026-01-16T08:00:00Z", "view"),
        ("u2", "c", "2026-01-17T08:00:00Z", "view"),
        ("u3", "c", "2026-01-17T08:00:00Z", "view"),
        ("q", "a", "2026-01-19T09:00:00Z", "view"),
        ("q", "p", "2026-01-17T09:00:00Z", "view"),
    ]
    return events


#: Training counts: p 9, c 6, a 5, b and d 4, e 2 (the cold-user ranking).
POPULARITY_ORDER = ["p", "c", "a", "b", "d", "e"]
#: Interactions at or after AS_OF: a model that sees them would change its scores.
LATE_EVENTS = [
    ("q", "c", "2026-01-20T00:00:00Z", "purchase"),
    ("u9", "e", "2026-01-21T00:00:00Z", "view"),
    ("u1", "c", "2026-01-21T00:00:00Z", "view"),
    ("u1", "e", "2026-01-21T00:01:00Z", "view"),
]


@dataclass(frozen=True)
class Factory:
    name: str
    fit: Callable[[pd.DataFrame, pd.Timestamp | None], Scorer]
    #: The item the model should put first for `q` among items `q` has not seen.
    top_for_q: str


FACTORIES = [
    Factory(
        "popularity",
        lambda frame, as_of: RecentPopularity.fit(
            frame, PopularityConfig(window="365D", half_life=None, event_weights={}), as_of
        ),
        top_for_q="c",  # not personal: the most popular item q has not seen
    ),
    Factory(
        "covisitation",
        lambda frame, as_of: Covisitation.fit(frame, CovisitationConfig(), as_of),
        top_for_q="b",
    ),
    Factory("ease", lambda frame, as_of: Ease.fit(frame, EaseConfig(l2=1.0), as_of), "b"),
    Factory(
        "ials",
        lambda frame, as_of: Ials.fit(
            frame, IalsConfig(factors=4, iterations=10, regularization=0.1, alpha=5.0), as_of
        ),
        top_for_q="b",
    ),
    Factory(
        "graph_filter",
        lambda frame, as_of: GraphFilter.fit(frame, GraphFilterConfig(factors=2), as_of),
        top_for_q="b",
    ),
]


@pytest.fixture(params=FACTORIES, ids=[factory.name for factory in FACTORIES])
def factory(request: pytest.FixtureRequest) -> Factory:
    return request.param


@pytest.fixture(scope="module")
def interactions() -> pd.DataFrame:
    return make_tables(_toy_events()).interactions


def test_scores_are_float32_users_by_requested_items(factory, interactions):
    scores = factory.fit(interactions, AS_OF).score(["q", "u1", "nobody"], [*ITEMS, "zzz"])
    assert scores.dtype == np.float32
    assert scores.shape == (3, len(ITEMS) + 1)
    assert np.isfinite(scores).all()


def test_scores_follow_the_order_of_the_requested_items(factory, interactions):
    model = factory.fit(interactions, AS_OF)
    users = ["q", "u1", "u6", "nobody"]
    permutation = np.random.default_rng(0).permutation(len(ITEMS))
    permuted = [ITEMS[i] for i in permutation]
    np.testing.assert_array_equal(
        model.score(users, permuted), model.score(users, ITEMS)[:, permutation]
    )


def test_items_unknown_to_the_model_score_zero(factory, interactions):
    scores = factory.fit(interactions, AS_OF).score(["q", "nobody"], ["zzz", "a", "yyy"])
    np.testing.assert_array_equal(scores[:, [0, 2]], 0.0)


def test_cold_users_get_the_training_popularity_ranking(factory, interactions):
    scores = factory.fit(interactions, AS_OF).score(["nobody", "q"], POPULARITY_ORDER)
    cold = scores[0]
    assert (np.diff(cold[[0, 1, 2, 3, 5]]) < 0).all()  # p > c > a > b > e: by count
    assert cold[3] == cold[4]  # b and d: 4 interactions each
    assert cold[-1] > 0


def test_fitting_twice_gives_the_same_scores(factory, interactions):
    users = ["q", "u1", "u5", "nobody"]
    first = factory.fit(interactions, AS_OF).score(users, ITEMS)
    second = factory.fit(interactions, AS_OF).score(users, ITEMS)
    np.testing.assert_array_equal(first, second)


def test_interactions_at_or_after_as_of_change_nothing(factory, interactions):
    with_late = make_tables(_toy_events() + LATE_EVENTS).interactions
    users = ["q", "u1", "u9", "nobody"]
    np.testing.assert_array_equal(
        factory.fit(with_late, AS_OF).score(users, ITEMS),
        factory.fit(interactions, AS_OF).score(users, ITEMS),
    )


@pytest.mark.parametrize("timed", [True, False], ids=["timed", "untimed"])
def test_ranks_the_item_co_consumed_with_the_users_item_first(factory, interactions, timed):
    frame = interactions if timed else interactions.assign(ts=pd.NaT)
    candidates = ["b", "c", "d", "e"]  # what q has not seen
    scores = factory.fit(frame, AS_OF if timed else None).score(["q"], candidates)[0]
    expected = candidates.index(factory.top_for_q)
    others = np.delete(scores, expected)
    assert scores[expected] > others.max(), dict(zip(candidates, scores, strict=True))
