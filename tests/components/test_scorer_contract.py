"""One contract every scorer honours (as benfred/implicit's recommender_base_test): the
baselines, the two-tower encoder, the two-stage model and the served bundle.

Each factory fits a scorer on a small hand-made marketplace: users who view `a` also view
`b` in the same session, users who view `c` also view `d`, everybody views the popular `p`
on another day, and `c` is also viewed alone: more popular than `b`, but never with `a`
in a session. The query user `q` has viewed only `a` and `p`: personal models must put
`b` first, popularity puts `c` first.

A kind for which a clause does not hold by design says so on its factory (`exempt`, with
the reason); the clause itself is the same for every other kind.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import (
    AnnoyConfig,
    CovisitationConfig,
    EaseConfig,
    GraphFilterConfig,
    IalsConfig,
    PipelineConfig,
    PopularityConfig,
    Rp3BetaConfig,
    TwoTowerConfig,
)
from components.data.split import DataSplit
from components.interfaces import Scorer
from components.ranking.dataset import (
    attach_labels,
    graded_labels,
    holdout_interactions,
    query_groups,
)
from components.ranking.features import feature_columns
from components.ranking.model import NON_CANDIDATE_OFFSET, TwoStageModel, feature_builder
from components.ranking.ranker import TrainedRanker, train_ranker
from components.retrieval.ann_index import build_annoy_index
from components.retrieval.covisitation import Covisitation
from components.retrieval.ease import Ease
from components.retrieval.graph_filter import GraphFilter
from components.retrieval.ials import Ials
from components.retrieval.popularity import RecentPopularity
from components.retrieval.rp3beta import Rp3Beta
from components.retrieval.stack import RetrievalStack
from components.retrieval.two_tower import UNKNOWN_ITEM_SCORE, TrainedTwoTower, TwoTowerScorer
from components.retrieval.two_tower_training import train_two_tower
from components.serving.bundle import build_bundle
from components.serving.recommender import BundleRecommender
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


#: Clauses a kind may be exempt from, by design: `Factory.exempt` names them with the reason.
COLD_USERS = "cold users get the training popularity ranking"
UNKNOWN_ITEMS = "items unknown to the model get one fixed score"
TOP_FOR_Q = "the item co-consumed with q's item comes first"


@dataclass(frozen=True)
class Factory:
    name: str
    fit: Callable[[pd.DataFrame, pd.Timestamp | None], Scorer]
    #: The item the model should put first for `q` among items `q` has not seen (None:
    #: exempt from TOP_FOR_Q).
    top_for_q: str | None
    #: What an item the model knows nothing about scores (the bottom of the model's scale).
    unknown_item_score: float = 0.0
    #: Scores are ranks: equally popular items get distinct, consecutive ones.
    ranks: bool = False
    #: Why an item's score may move by float rounding (never more) with the other items
    #: requested beside it; None: it may not move at all.
    rounding_by_request: str | None = None
    #: Clauses that do not hold for this kind by design, each with its one-line reason.
    exempt: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert set(self.exempt) <= {COLD_USERS, UNKNOWN_ITEMS, TOP_FOR_Q}, self.exempt
        assert (self.top_for_q is None) == (TOP_FOR_Q in self.exempt), self.name

    def skip_if_exempt(self, clause: str) -> None:
        if clause in self.exempt:
            pytest.skip(f"{self.name} is exempt from {clause!r}: {self.exempt[clause]}")


#: The baselines' popularity: every training interaction counts once.
POPULARITY = PopularityConfig(window="365D", half_life=None, event_weights={})
TABLES = make_tables(_toy_events())
#: Listings a..e and p, without attributes: the two-tower learns from item ids alone.
CATALOGUE = TABLES.items
#: Small and fast (a fit takes a fraction of a second), seeded.
TWO_TOWER = TwoTowerConfig(
    embedding_dim=8,
    feature_dim=4,
    hidden_dim=16,
    text_buckets=16,
    batch_size=8,
    learning_rate=5e-2,
    max_epochs=5,
    extra_negatives=4,
    max_training_seconds=60,
)
#: The baselines that are candidate sources, merged by fusion; a tiny LightGBM ranker (a
#: few small trees on a few dozen rows, one thread) for the kinds that have one.
TWO_STAGE = PipelineConfig.model_validate(
    {
        "name": "contract",
        "source": {"kind": "synthetic"},
        "model": {
            "candidates": {
                "sources": ["covisitation", "popularity", "linear"],
                "per_source": 10,
                "n": 10,
                "popularity": POPULARITY.model_dump(),
                "ease": {"l2": 1.0},
            },
            "ranker": {
                "max_rounds": 20,
                "num_leaves": 4,
                "min_data_in_leaf": 2,
                "num_threads": 1,
                "holdout_share": 0.4,  # without timestamps: one of 3 or 4 interactions
            },
        },
    }
)
#: The ranker's labels: the last two days before the cut-off (without timestamps: a seeded
#: share of each user's interactions, as for a fixed split).
LABEL_WINDOW = pd.Timedelta("2D")
EVERY_ITEM = np.ones(len(CATALOGUE), dtype=bool)
#: The serving moment is one microsecond after the bundle's last event.
MICROSECOND = pd.Timedelta(microseconds=1)


def _known_at(frame: pd.DataFrame, as_of: pd.Timestamp | None) -> pd.DataFrame:
    """What a bundle built at `as_of` holds: the interactions before it."""
    return frame if as_of is None else frame[frame["ts"] < as_of]


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """On a busy two-core machine each of torch's parallel regions waits for a core: on one
    thread the tiny model trains in a tenth of a second, not seconds (and as
    deterministically: a fit is reproducible for a given thread count)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _train_two_tower(frame: pd.DataFrame, as_of: pd.Timestamp | None) -> TrainedTwoTower:
    """Fitted on `frame` before `as_of` (the fit of a split's valid stage, no refit)."""
    empty = frame.iloc[:0]
    split = DataSplit(
        protocol="fixed" if as_of is None else "temporal",
        tables=TABLES.replace(interactions=frame),
        train=frame,
        valid=empty,
        test=empty,
        valid_cutoff=as_of,
        test_cutoff=as_of,
    )
    with _one_torch_thread():
        return train_two_tower(split, TWO_TOWER, "valid", validation=None)


def _two_tower(frame: pd.DataFrame, as_of: pd.Timestamp | None) -> TwoTowerScorer:
    trained = _train_two_tower(frame, as_of)
    with _one_torch_thread():
        return TwoTowerScorer(trained, CATALOGUE, frame, as_of)


#: The retrieval stack's own settings from the two-stage pipeline config.
_STACK_SETTINGS = (TWO_STAGE.model.candidates, TWO_STAGE.evaluation.excluded_events)


def _two_stage(
    frame: pd.DataFrame, as_of: pd.Timestamp | None, ranker: TrainedRanker | None = None
) -> TwoStageModel:
    stack = RetrievalStack.fit(frame, CATALOGUE, as_of, EVERY_ITEM, *_STACK_SETTINGS)
    return TwoStageModel.assemble(stack, ranker, TWO_STAGE.model.ranker)


def _ranker(frame: pd.DataFrame, as_of: pd.Timestamp | None) -> TrainedRanker:
    """Trained as the pipeline trains it, on what is known at `as_of`: candidates and
    features before the label window, graded labels from it, no early stopping."""
    config = TWO_STAGE.model.ranker
    known = _known_at(frame, as_of)
    if as_of is None:
        moment = None
        history, window = holdout_interactions(known, config.holdout_share, config.seed)
    else:
        moment = as_of - LABEL_WINDOW
        history, window = known[known["ts"] < moment], known[known["ts"] >= moment]
    stack = RetrievalStack.fit(history, CATALOGUE, moment, EVERY_ITEM, *_STACK_SETTINGS)
    labels = graded_labels(window, config)
    candidates = stack.candidates(labels["user_id"].unique().tolist())
    features = attach_labels(feature_builder(stack, config).transform(candidates), labels)
    names = [name for name in feature_columns(features) if features[name].notna().any()]
    fit = query_groups(features, config, seed=config.seed)
    none = query_groups(features.iloc[:0], config, seed=config.seed, sample_negatives=False)
    return train_ranker(fit, none, names, {}, config)


def _ranked_two_stage(frame: pd.DataFrame, as_of: pd.Timestamp | None) -> TwoStageModel:
    return _two_stage(frame, as_of, _ranker(frame, as_of))


def _served(kind: str) -> Callable[[pd.DataFrame, pd.Timestamp | None], BundleRecommender]:
    """The served recommender of a bundle built at `as_of` (as a retrain builds one from
    its snapshot), loaded back: `kind` two_stage (with its ranker: what a retrain
    registers) or two_tower."""

    def fit(frame: pd.DataFrame, as_of: pd.Timestamp | None) -> BundleRecommender:
        known = _known_at(frame, as_of)
        until = None if as_of is None else (as_of - MICROSECOND).isoformat()
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            parts: dict[str, object] = {}
            if kind == "two_stage":
                _ranked_two_stage(frame, as_of).save(folder / "two-stage")
                parts["two_stage_dir"] = folder / "two-stage"
            else:
                trained = _train_two_tower(frame, as_of)
                trained.save(folder / "encoder")
                vectors = trained.embed_items(CATALOGUE, as_of)
                ids = CATALOGUE["item_id"].astype(str).tolist()
                build_annoy_index(vectors, ids, AnnoyConfig(n_trees=2), folder / "index")
                parts.update(encoder_dir=folder / "encoder", index_dir=folder / "index")
                parts["history"] = known
            build_bundle(
                folder / "bundle",
                model=RecentPopularity.fit(known, POPULARITY, as_of),
                items=CATALOGUE,
                available=pd.Series(True, index=CATALOGUE.index),
                user_exclusions=known[known["event"] == "purchase"],
                metadata={"data_until": until},
                **parts,
            )
            with _one_torch_thread():
                return BundleRecommender.load(folder / "bundle")

    return fit


#: Why the two-tower kinds are exempt from TOP_FOR_Q.
POOLED_HISTORY = (
    "the user tower pools q's whole history, p included, and p's co-viewers make c as "
    "close as b: which comes first depends on the seed (c without timestamps)"
)
#: Why the ranked two-stage kinds are exempt from TOP_FOR_Q.
RANKER_LABELS = (
    "the ranker learns from one tiny label window (mostly everybody's view of p): nothing "
    "in it rewards a's session partner, so its order for q is whatever 20 trees fit"
)

FACTORIES = [
    Factory(
        "popularity",
        lambda frame, as_of: RecentPopularity.fit(frame, POPULARITY, as_of),
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
    Factory(
        "rp3beta",
        lambda frame, as_of: Rp3Beta.fit(frame, Rp3BetaConfig(), as_of),
        top_for_q="b",
    ),
    Factory(
        "two_tower",
        _two_tower,
        top_for_q=None,
        unknown_item_score=UNKNOWN_ITEM_SCORE,
        exempt={
            COLD_USERS: "a user without history gets the user tower's empty-history vector",
            TOP_FOR_Q: POOLED_HISTORY,
        },
    ),
    Factory(
        "two_stage",
        _two_stage,
        top_for_q="b",
        # Non-candidates score below every candidate, then by popularity (none: 0).
        unknown_item_score=NON_CANDIDATE_OFFSET,
        ranks=True,
    ),
    Factory(
        "two_stage_ranked",
        _ranked_two_stage,
        top_for_q=None,
        unknown_item_score=NON_CANDIDATE_OFFSET,
        ranks=True,
        exempt={TOP_FOR_Q: RANKER_LABELS},
    ),
    Factory(
        "served_two_stage",
        _served("two_stage"),
        top_for_q=None,
        unknown_item_score=NON_CANDIDATE_OFFSET,
        ranks=True,
        exempt={TOP_FOR_Q: RANKER_LABELS},
    ),
    Factory(
        "served_two_tower",
        _served("two_tower"),
        top_for_q=None,
        rounding_by_request="the requested items are embedded per request, and the item "
        "tower's float sums depend on the order of the batch",
        exempt={
            UNKNOWN_ITEMS: "a known user's score of an id outside the catalogue is the cosine "
            "with a listing embedded from no attributes",
            TOP_FOR_Q: POOLED_HISTORY,
        },
    ),
]


@pytest.fixture(params=FACTORIES, ids=[factory.name for factory in FACTORIES])
def factory(request: pytest.FixtureRequest) -> Factory:
    return request.param


@pytest.fixture(scope="module")
def interactions() -> pd.DataFrame:
    return TABLES.interactions


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
    got, want = model.score(users, permuted), model.score(users, ITEMS)[:, permutation]
    if factory.rounding_by_request is None:
        np.testing.assert_array_equal(got, want)
    else:  # a few float32 ulps, no more
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_items_unknown_to_the_model_get_one_fixed_score(factory, interactions):
    factory.skip_if_exempt(UNKNOWN_ITEMS)
    scores = factory.fit(interactions, AS_OF).score(["q", "nobody"], ["zzz", "a", "yyy"])
    np.testing.assert_array_equal(scores[:, [0, 2]], np.float32(factory.unknown_item_score))


def test_cold_users_get_the_training_popularity_ranking(factory, interactions):
    factory.skip_if_exempt(COLD_USERS)
    scores = factory.fit(interactions, AS_OF).score(["nobody", "q"], POPULARITY_ORDER)
    cold = scores[0]
    assert (np.diff(cold[[0, 1, 2, 3, 5]]) < 0).all()  # p > c > a > b > e: by count
    if factory.ranks:  # b and d: 4 interactions each, between a and e, on distinct ranks
        assert (np.diff(cold[[0, 1, 2, 4, 5]]) < 0).all()
    else:
        assert cold[3] == cold[4]  # b and d: 4 interactions each
    assert cold[-1] > factory.unknown_item_score


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
    factory.skip_if_exempt(TOP_FOR_Q)
    frame = interactions if timed else interactions.assign(ts=pd.NaT)
    candidates = ["b", "c", "d", "e"]  # what q has not seen
    scores = factory.fit(frame, AS_OF if timed else None).score(["q"], candidates)[0]
    expected = candidates.index(factory.top_for_q)
    others = np.delete(scores, expected)
    assert scores[expected] > others.max(), dict(zip(candidates, scores, strict=True))
