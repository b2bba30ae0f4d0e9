"""Off-policy evaluation of a version from an explored log: the log is written by the
served experiment model, sales come back as interactions, and a ranking that was never
served is estimated from it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from components.config import ExperimentConfig
from components.experiments.off_policy import NoSupportError
from components.pipeline.off_policy import (
    Replay,
    estimate_versions,
    logged_requests,
    paired_difference,
)
from components.serving.experiment import ExperimentRecommender, ExperimentSpec
from components.serving.list_cache import CachedLists
from components.serving.recommender import BundleRecommender

TOP_M, K, TEMPERATURE = 6, 3, 1.0
EXAMINATION = np.array([1.0, 0.7, 0.5])


@dataclass
class Collected:
    frames: list

    def log(self, rows: pd.DataFrame) -> None:
        self.frames.append(rows)


@dataclass
class ReversedLists:
    """Another version: the logging arm's top TOP_M in reverse order (never served)."""

    lists: CachedLists

    @property
    def recommender(self) -> BundleRecommender:
        return self.lists.recommender

    def prefetch(self, user_ids) -> None:
        self.lists.prefetch(user_ids)

    def cached(self, user_id: str) -> np.ndarray:
        return self.lists.cached(user_id)[:TOP_M][::-1]


def explored_log(bundle, monkeypatch, deterministic: bool = False):
    """Sixteen days of 300 users served by the explore design; request ids (which seed the
    exploration's coins) are numbered, so the log is the same on every run."""
    numbers = iter(range(1, 10**6))
    monkeypatch.setattr(
        "components.serving.experiment.uuid.uuid4", lambda: uuid.UUID(int=next(numbers))
    )
    recommender = BundleRecommender.load(bundle)
    spec = ExperimentSpec(
        experiment_id="exp-ope",
        model_name="rewear",
        control_version=1,
        treatment_version=1,
        design="ab" if deterministic else "explore",
        salt="ope",
        treatment_share=0.5,
        exposure_log="memory",
        started_at="2026-03-02T00:00:00+00:00",
        exploration_top_m=TOP_M,
        exploration_temperature=0.0 if deterministic else TEMPERATURE,
    )
    sink = Collected([])
    experiment = ExperimentRecommender(
        spec, {"control": recommender, "treatment": recommender}, sink
    )
    users = [f"shopper-{n}" for n in range(300)]  # unknown: all see the fallback list
    at = pd.Timestamp("2026-03-02T10:00:00Z")
    for day in range(16):
        experiment.recommend(users, k=K, served_at=at + pd.Timedelta(days=day))
    return recommender, pd.concat(sink.frames, ignore_index=True)


def sales(exposures: pd.DataFrame, relevance: dict[str, float], seed: int = 0) -> pd.DataFrame:
    """Purchases of logged slots, each with probability relevance x examination."""
    rng = np.random.default_rng(seed)
    chance = (
        exposures["item_id"].map(relevance).to_numpy()
        * EXAMINATION[exposures["position"].to_numpy() - 1]
    )
    bought = exposures[rng.random(len(exposures)) < chance]
    return pd.DataFrame(
        {
            "user_id": bought["unit_id"].to_numpy(),
            "item_id": bought["item_id"].to_numpy(),
            "ts": bought["served_at"] + pd.Timedelta(hours=1),
            "event": "purchase",
            "weight": 1.0,
        }
    )


def test_a_version_never_served_is_estimated_from_the_explored_log(
    tiny_bundle, monkeypatch
) -> None:
    recommender, exposures = explored_log(tiny_bundle, monkeypatch)
    lists = CachedLists(recommender, depth=TOP_M + 3)
    lists.prefetch(["shopper-0"])
    top = recommender.item_ids[lists.cached("shopper-0")[:TOP_M]]
    assert len(top) == TOP_M
    relevance = dict(zip(top, [0.15, 0.3, 0.1, 0.25, 0.2, 0.35], strict=True))
    interactions = sales(exposures, relevance)
    items = pd.DataFrame(
        {
            "item_id": recommender.item_ids,
            "sold_at": pd.Series(pd.NaT, index=range(len(recommender.item_ids))).dt.tz_localize(
                "UTC"
            ),
        }
    )
    logged = logged_requests(exposures, interactions, ExperimentConfig(), TOP_M)
    assert logged.slates.reward.sum() == len(interactions)
    logging = Replay.with_lists(lists, items, TOP_M + 3)
    target = Replay(ReversedLists(lists), logging.sold_us)
    results = estimate_versions(
        logged, {"reversed": target, "logging": logging}, {"1": logging}, resamples=200
    )
    # The reversed list was never served as such, but the logging policy covered it.
    reversed_top = list(top[::-1][:K])
    served = exposures.groupby("request_id")["item_id"].agg(list)
    assert not served.apply(lambda items: items == reversed_top).all()
    found = results["reversed"]
    assert found.support.covered_slots == 1.0
    truth = sum(relevance[item] * EXAMINATION[j] for j, item in enumerate(reversed_top))
    for name in ("ips", "snips", "dr", "pbm", "snpbm"):
        estimate = found.estimates[name]
        assert estimate.low <= truth <= estimate.high, name
        assert estimate.value == pytest.approx(truth, rel=0.15), name
    # The position-based weights count a target item wherever the log showed it.
    assert found.support.effective_share_position_based > 2 * found.support.effective_share
    deterministic = sum(relevance[item] * EXAMINATION[j] for j, item in enumerate(top[:K]))
    difference = paired_difference(results, "reversed", "logging", "snips")
    assert difference["low"] <= truth / deterministic - 1 <= difference["high"]


def test_a_deterministic_log_is_refused_with_the_fix(tiny_bundle, monkeypatch) -> None:
    _, exposures = explored_log(tiny_bundle, monkeypatch, deterministic=True)
    empty = pd.DataFrame(columns=["user_id", "item_id", "ts", "event", "weight"])
    with pytest.raises(NoSupportError, match=r"exploration\.temperature > 0"):
        logged_requests(exposures, empty, ExperimentConfig(), TOP_M)


def test_the_gate_skips_a_challenger_the_log_covers_poorly() -> None:
    from components.pipeline.off_policy import skip_when_poorly_covered

    result = {"versions": {"7": {"support": {"covered_slots": 0.62}}}, "difference": {}}
    skipped = skip_when_poorly_covered(result, 7, 0.95)
    assert "covers 62% of v7's slots" in skipped["skipped"]
    assert skip_when_poorly_covered(result, 7, 0.5) is result
