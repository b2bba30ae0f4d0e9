"""The served experiment: units hashed into arms (or interleaved), answers carrying the
request id, variant and team, and one exposure-log row per answered slot."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pytest

from components.experiments.assignment import assign_variants
from components.experiments.interleaving import request_rng, team_draft
from components.experiments.schema import CONTROL, EXPOSURE_COLUMNS, INTERLEAVED, TREATMENT
from components.serving.experiment import ExperimentRecommender, ExperimentSpec
from components.serving.list_cache import CachedLists
from components.serving.recommender import OUTPUT_COLUMNS, BundleRecommender


@dataclass
class ReversedArm:
    """Another ranker: the recommender's top 8, reversed (a different, known order)."""

    recommender: BundleRecommender

    def recommend(self, user_ids, k=20, exclude_item_ids=(), recent_item_ids=None):
        answer = self.recommender.recommend(user_ids, 8, exclude_item_ids, recent_item_ids)
        answer = answer.sort_values(["request", "rank"], ascending=[True, False])
        answer["rank"] = answer.groupby("request").cumcount() + 1
        return answer[answer["rank"] <= int(k)].reset_index(drop=True)


@dataclass
class Collected:
    frames: list[pd.DataFrame] = field(default_factory=list)

    def log(self, rows: pd.DataFrame) -> None:
        self.frames.append(rows)

    @property
    def rows(self) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True)


def _spec(design: str, temperature: float = 0.0, top_m: int = 50) -> ExperimentSpec:
    return ExperimentSpec(
        experiment_id="exp-1",
        model_name="rewear",
        control_version=3,
        treatment_version=4,
        design=design,
        salt="salt-1",
        treatment_share=0.5,
        exposure_log="unused",
        started_at="2026-03-02T00:00:00+00:00",
        exploration_top_m=top_m,
        exploration_temperature=temperature,
    )


@pytest.fixture
def arms(tiny_bundle) -> dict[str, object]:
    recommender = BundleRecommender.load(tiny_bundle)
    return {CONTROL: recommender, TREATMENT: ReversedArm(recommender)}


USERS = [f"user-{n}" for n in range(12)]


def test_ab_units_see_their_arm_and_every_slot_is_logged(arms) -> None:
    log = Collected()
    experiment = ExperimentRecommender(_spec("ab"), arms, log)
    at = pd.Timestamp("2026-03-02T10:00:00Z")
    answer = experiment.recommend(USERS, k=3, served_at=at)
    assert list(answer.columns) == [*OUTPUT_COLUMNS, "request_id", "variant", "team"]
    expected = dict(zip(USERS, assign_variants(USERS, "salt-1"), strict=True))
    assert set(expected.values()) == {CONTROL, TREATMENT}
    for row, user in enumerate(USERS):
        mine = answer[answer["request"] == row]
        arm = arms[expected[user]]
        own = arm.recommend([user], k=3)
        assert mine["item_id"].tolist() == own["item_id"].tolist()
        assert set(mine["variant"]) == {expected[user]} and mine["team"].isna().all()
        assert mine["request_id"].nunique() == 1
    assert answer.groupby("request")["request_id"].first().is_unique
    logged = log.rows
    assert list(logged.columns) == list(EXPOSURE_COLUMNS)
    assert len(logged) == len(answer)
    assert (logged["served_at"] == at).all() and (logged["experiment_id"] == "exp-1").all()
    assert logged["unit_id"].tolist() == answer["user_id"].tolist()
    versions = logged["variant"].map({CONTROL: "3", TREATMENT: "4"})
    assert logged["model_version"].tolist() == versions.tolist()
    assert logged.groupby("request_id")["position"].agg(list).map(lambda p: p == [1, 2, 3]).all()
    assert (logged["policy"] == "deterministic").all() and (logged["propensity"] == 1.0).all()


def test_interleaving_merges_both_lists_by_team_draft_and_credits_each_slot(arms) -> None:
    log = Collected()
    experiment = ExperimentRecommender(_spec("interleave"), arms, log)
    answer = experiment.recommend(USERS[:4], k=4)
    assert (answer["variant"] == INTERLEAVED).all()
    for row, user in enumerate(USERS[:4]):
        mine = answer[answer["request"] == row]
        lists = {arm: arms[arm].recommend([user], k=4)["item_id"].tolist() for arm in arms}
        merged = team_draft(
            lists[CONTROL],
            lists[TREATMENT],
            4,
            request_rng("salt-1", mine["request_id"].iloc[0]),
        )
        assert mine["item_id"].tolist() == merged.items
        assert mine["team"].tolist() == merged.teams
        assert mine["rank"].tolist() == [1, 2, 3, 4]
    logged = log.rows
    assert (
        logged["model_version"].tolist()
        == logged["team"].map({CONTROL: "3", TREATMENT: "4"}).tolist()
    )
    assert (logged["policy"] == "team_draft").all()


def test_anonymous_rows_are_units_by_session_key_or_alone(arms) -> None:
    log = Collected()
    experiment = ExperimentRecommender(_spec("ab"), arms, log)
    experiment.recommend(
        [None, None, "user-1"],
        k=2,
        recent_item_ids=[["i2"], ["i2"], None],
        session_ids=["session-9", None, None],
    )
    units = log.rows.groupby("request_id")[["unit_id", "unit_kind"]].first()
    assert sorted(units["unit_kind"]) == ["session", "session", "user"]
    assert "session-9" in set(units["unit_id"]) and "user-1" in set(units["unit_id"])
    assert units["unit_id"].str.startswith("anonymous-").sum() == 1


def test_cached_lists_answer_as_the_recommender_past_exclusions(tiny_bundle) -> None:
    recommender = BundleRecommender.load(tiny_bundle)
    cached = CachedLists(recommender, depth=4)
    users = ["a", "b", "u1"]
    cached.prefetch(users)
    for excluded in ([], ["i5"], ["i5", "i1", "i6"], ["i1", "i2", "i3", "i4", "i5"]):
        expected = recommender.recommend(users, k=3, exclude_item_ids=excluded)
        got = cached.recommend(users, k=3, exclude_item_ids=excluded)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    assert cached.hits > 0 and cached.misses > 0  # the last exclusions outrun the depth
    session = cached.recommend([None], k=2, recent_item_ids=[["i2"]])
    pd.testing.assert_frame_equal(
        session, recommender.recommend([None], k=2, recent_item_ids=[["i2"]])
    )


def test_explore_draws_from_the_control_arms_top_m_and_logs_exact_propensities(arms) -> None:
    from components.experiments.exploration import (
        PLACKETT_LUCE,
        position_marginals,
        prefix_propensities,
    )

    log = Collected()
    experiment = ExperimentRecommender(_spec("explore", temperature=0.8, top_m=6), arms, log)
    at = pd.Timestamp("2026-03-02T10:00:00Z")
    users = USERS * 20
    answer = experiment.recommend(users, k=3, served_at=at)
    assert list(answer.columns) == [*OUTPUT_COLUMNS, "request_id", "variant", "team"]
    assert set(answer["variant"]) == {CONTROL}
    rows = log.rows
    assert set(rows["policy"]) == {PLACKETT_LUCE} and len(rows) == len(answer)
    marginals = position_marginals(6, 3, 0.8)
    first_slots = []
    for row, user in enumerate(users):
        own = arms[CONTROL].recommend([user], k=6)["item_id"].tolist()
        mine = rows[
            rows["request_id"] == answer.loc[answer["request"] == row, "request_id"].iloc[0]
        ]
        ranks = mine["candidate_rank"].to_numpy(int)
        # Each slot is the control's item of the logged rank, drawn from its top 6 ...
        assert mine["item_id"].tolist() == [own[rank - 1] for rank in ranks]
        assert len(set(ranks)) == 3 and ranks.max() <= 6
        # ... with the exact marginal and prefix propensities of that draw.
        assert mine["propensity"].tolist() == pytest.approx(
            marginals[ranks - 1, [0, 1, 2]].tolist()
        )
        assert mine["prefix_propensity"].tolist() == pytest.approx(
            prefix_propensities(ranks[None, :] - 1, 6, 0.8)[0].tolist()
        )
        first_slots.append(ranks[0])
    # The draws follow the rank weights: the top item leads about as often as it should.
    share = float(pd.Series(first_slots).eq(1).mean())
    assert abs(share - marginals[0, 0]) < 0.1
    # The answer drops the logged propensity columns: the caller sees the usual columns.
    assert "propensity" not in answer.columns


def test_an_explore_spec_needs_a_temperature() -> None:
    with pytest.raises(ValueError, match="temperature > 0"):
        _spec("explore", temperature=0.0)


def test_a_spec_with_an_unknown_design_or_share_is_refused() -> None:
    with pytest.raises(ValueError, match="use one of"):
        ExperimentSpec(**{**_spec("ab").__dict__, "design": "bandit"})
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ExperimentSpec(**{**_spec("ab").__dict__, "treatment_share": 0.0})


def test_answers_reach_the_parquet_exposure_log_through_the_buffer(arms, tmp_path) -> None:
    from components.experiments.exposure_log import ExposureLogger, read_exposures

    logger = ExposureLogger(open_sink(tmp_path / "exposures"))
    experiment = ExperimentRecommender(_spec("interleave"), arms, logger)
    answer = experiment.recommend(USERS, k=3, served_at=pd.Timestamp("2026-03-02T10:00:00Z"))
    logger.close()
    logged = read_exposures(str(tmp_path / "exposures"), experiment_id="exp-1")
    assert logger.dropped_rows == 0 and logger.written_rows == len(answer) == len(logged)
    merged = answer.merge(
        logged, left_on=["request_id", "rank"], right_on=["request_id", "position"]
    )
    assert (merged["item_id_x"] == merged["item_id_y"]).all()
    assert (merged["team_x"] == merged["team_y"]).all()


def open_sink(path):
    from components.experiments.exposure_log import open_exposure_sink

    return open_exposure_sink(str(path))
