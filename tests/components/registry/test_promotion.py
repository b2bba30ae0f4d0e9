"""The promotion gate against a real MLflow registry: decisions, tags, the champion alias,
and the fresh-process smoke test of what was registered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.config import PromotionConfig
from components.registry import promotion
from components.registry.champion_alias import decision_tags
from components.registry.promotion import decide
from components.registry.promotion_checks import EXPOSURE_RULES
from components.registry.promotion_smoke import SmokeResult
from components.registry.registration import (
    CHALLENGER,
    CHAMPION,
    current_alias_version,
    log_and_register,
)
from components.registry.tracking import configure_mlflow
from components.settings import RewearSettings
from tests.conftest import write_tiny_bundle

GOOD_SMOKE = SmokeResult(ok=True, load_s=1.0, requests=50, p50_ms=3.0, p99_ms=9.0)
#: numpy scalars, as the evaluation suite returns them: the decision must stay JSON-able.
METRICS = {"coverage@20": np.float64(0.5), "ndcg@10": np.float64(0.2)}


def comparison(low: float, difference: float = 0.0, users: int = 500) -> dict:
    return {
        "champion_version": 1,
        "comparable": True,
        "evaluated_users": users,
        "challenger": {"ndcg@10": 0.2 + difference},
        "champion": {"ndcg@10": 0.2},
        "intervals": {"ndcg@10": {"difference": difference, "low": low, "high": difference + 0.01}},
    }


@pytest.mark.parametrize(
    ("compared", "config", "smoke", "decision", "reason"),
    [
        (None, PromotionConfig(), GOOD_SMOKE, "promoted", None),
        (comparison(low=-0.0099), PromotionConfig(margin=0.01), GOOD_SMOKE, "promoted", None),
        (comparison(low=-0.0101), PromotionConfig(margin=0.01), GOOD_SMOKE, "rejected", "worse"),
        (comparison(low=0.02, users=5), PromotionConfig(), GOOD_SMOKE, "rejected", "only 5 users"),
        (
            {"champion_version": 1, "comparable": False, "reason": "no interaction after X"},
            PromotionConfig(),
            GOOD_SMOKE,
            "rejected",
            "not comparable with champion v1: no interaction after X",
        ),
        (
            comparison(low=0.0),
            PromotionConfig(metric="recall@10"),
            GOOD_SMOKE,
            "rejected",
            "has no recall@10",
        ),
        (
            comparison(low=0.0),
            PromotionConfig(min_coverage=0.6),
            GOOD_SMOKE,
            "rejected",
            "coverage@20 0.5000 < registry.promotion.min_coverage 0.6",
        ),
        (
            comparison(low=0.0),
            PromotionConfig(max_p99_latency_ms=5),
            GOOD_SMOKE,
            "rejected",
            "p99 9.0 ms",
        ),
        (None, PromotionConfig(), SmokeResult(ok=False, problems=["boom"]), "rejected", "boom"),
    ],
)
def test_decide_applies_the_margin_and_every_guardrail(compared, config, smoke, decision, reason):
    verdict = decide(compared, METRICS, smoke, config)
    assert verdict.decision == decision
    assert json.loads(json.dumps(verdict.to_dict()))["decision"] == decision
    if reason is None:
        assert verdict.reasons == []
    else:
        assert any(reason in text for text in verdict.reasons), verdict.reasons


def exposure_comparison(gini: tuple[float, float], new: tuple[float, float]) -> dict:
    """A comparison whose NDCG ties and whose exposure intervals are (low, high)."""
    compared = comparison(low=0.0)
    for metric, (low, high) in (("gini_sellers@20", gini), ("new_item_exposure@20", new)):
        compared["intervals"][metric] = {
            "model": 0.5 + (low + high) / 2,
            "other": 0.5,
            "difference": (low + high) / 2,
            "low": low,
            "high": high,
        }
    return compared


@pytest.mark.parametrize(
    ("gini", "new", "config", "decision", "reason"),
    [
        # Within the tolerance (0.05), or not clearly beyond it: the guard lets it through.
        ((0.005, 0.049), (-0.049, -0.005), PromotionConfig(), "promoted", None),
        ((0.01, 0.30), (-0.30, 0.01), PromotionConfig(), "promoted", None),
        # Clearly more concentrated on sellers / clearly fewer new listings.
        ((0.051, 0.09), (-0.01, 0.01), PromotionConfig(), "rejected", "seller-exposure Gini"),
        ((-0.01, 0.01), (-0.08, -0.051), PromotionConfig(), "rejected", "new listings"),
        # A wider tolerance, or the guard off (figures still reported), lets both through.
        ((0.051, 0.09), (-0.08, -0.051), PromotionConfig(max_seller_gini_increase=0.1,
         max_new_listing_exposure_drop=0.1), "promoted", None),
        ((0.051, 0.09), (-0.08, -0.051), PromotionConfig(exposure_guard=False), "promoted", None),
        ((0.021, 0.03), (-0.03, -0.021), PromotionConfig(max_seller_gini_increase=0.02,
         max_new_listing_exposure_drop=0.02), "rejected", "beyond registry.promotion.max_"),
    ],
)  # fmt: skip
def test_the_exposure_guard_holds_back_clearly_more_concentrated_challengers(
    gini, new, config, decision, reason
):
    verdict = decide(exposure_comparison(gini, new), METRICS, GOOD_SMOKE, config)
    assert verdict.decision == decision, verdict.reasons
    if reason is not None:
        assert any(reason in text for text in verdict.reasons), verdict.reasons
    assert set(verdict.exposure) == {"gini_sellers@20", "new_item_exposure@20"}
    assert verdict.exposure["gini_sellers@20"]["low"] == gini[0]
    assert verdict.exposure["new_item_exposure@20"]["high"] == new[1]
    assert verdict.exposure["gini_sellers@20"]["bound"] == config.max_seller_gini_increase
    report = json.loads(json.dumps(verdict.to_dict()))
    assert report["exposure"]["gini_sellers@20"]["challenger"] == pytest.approx(0.5 + sum(gini) / 2)
    tags = decision_tags(verdict, config.metric)
    assert tags["promotion.gini_sellers_at_20.low"] == f"{gini[0]:.6f}"
    assert tags["promotion.new_item_exposure_at_20.high"] == f"{new[1]:.6f}"
    sellers_held_back = gini[0] > config.max_seller_gini_increase and config.exposure_guard
    assert (
        tags["promotion.gini_sellers_at_20_vs_champion.passed"]
        == str(not sellers_held_back).lower()
    )
    if not config.exposure_guard:
        assert "not enforced" in " ".join(check.detail for check in verdict.checks)


def test_without_seller_ids_or_a_champion_the_exposure_guard_passes_and_says_why():
    first = decide(None, METRICS, GOOD_SMOKE, PromotionConfig())
    assert first.decision == "promoted" and first.exposure == {}
    no_sellers = decide(comparison(low=0.0), METRICS, GOOD_SMOKE, PromotionConfig())
    assert no_sellers.decision == "promoted"
    details = {check.name: check.detail for check in no_sellers.checks if check.passed}
    assert details["gini_sellers@20 vs champion"].startswith(
        "gini_sellers@20 not measured (the data has no seller ids"
    )
    assert details["new_item_exposure@20 vs champion"].startswith("new_item_exposure@20 not")


def test_the_guard_reads_every_exposure_figure_the_evaluation_compares():
    from components.evaluation.suite import COMPARED_EXPOSURE

    assert set(EXPOSURE_RULES) == set(COMPARED_EXPOSURE)


class BiggestSellersOnly:
    """A challenger that only recommends the listings of the `n` biggest sellers, in the
    order of a sound model."""

    def __init__(self, base, items: pd.DataFrame, n: int = 5) -> None:
        biggest = items["seller_id"].value_counts().index[:n]
        self.base = base
        self.listings = set(items.loc[items["seller_id"].isin(biggest), "item_id"])

    def score(self, user_ids, item_ids):
        scores = np.asarray(self.base.score(user_ids, item_ids), dtype=float)
        theirs = np.array([item in self.listings for item in item_ids])
        return np.where(theirs[None, :], scores, -np.inf)


@pytest.fixture(scope="module")
def biggest_sellers_comparison(synthetic_split):
    """Champion: EASE; challenger: EASE's order restricted to the 5 biggest sellers, both
    evaluated on the synthetic market's test window as `compare_with_champion` does."""
    from components.config import EvaluationConfig
    from components.evaluation.baselines import fit_baselines
    from components.evaluation.suite import evaluate_models

    split = synthetic_split
    config = EvaluationConfig(ks=(10, 20), bootstrap_resamples=300)
    history = split.history("test")
    ease = fit_baselines(history, config.baselines, split.test_cutoff)["ease"]
    scorers = {"challenger": BiggestSellersOnly(ease, split.tables.items), "champion": ease}
    suite = evaluate_models("challenger", scorers, split, "test", config)
    return {
        "champion_version": 1,
        "comparable": True,
        "evaluated_users": suite.n_users,
        "intervals": suite.comparisons["champion"],
    }


def test_a_challenger_that_only_recommends_the_biggest_sellers_is_held_back(
    biggest_sellers_comparison,
):
    # NDCG alone would let it through with a loose margin; the exposure guard does not.
    loose = PromotionConfig(margin=1.0)
    verdict = decide(biggest_sellers_comparison, METRICS, GOOD_SMOKE, loose)
    assert verdict.decision == "rejected"
    failed = [check.name for check in verdict.checks if not check.passed]
    assert failed == ["gini_sellers@20 vs champion"]
    gini = verdict.exposure["gini_sellers@20"]
    assert gini["challenger"] > 0.95 > gini["champion"]
    assert gini["low"] > loose.max_seller_gini_increase
    assert "seller-exposure Gini (gini_sellers@20) clearly higher" in verdict.reasons[0]
    # The same challenger without the guard: promoted, the figures still recorded.
    unguarded = decide(
        biggest_sellers_comparison,
        METRICS,
        GOOD_SMOKE,
        PromotionConfig(margin=1.0, exposure_guard=False),
    )
    assert unguarded.decision == "promoted" and unguarded.exposure == verdict.exposure


def test_force_promotes_past_the_comparison_but_not_past_a_broken_version():
    worse = comparison(low=-0.5, difference=-0.4)
    assert decide(worse, METRICS, GOOD_SMOKE, PromotionConfig(), force=True).decision == "forced"
    broken = SmokeResult(ok=False, problems=["cannot load"])
    assert decide(None, METRICS, broken, PromotionConfig(), force=True).decision == "rejected"


def _register(home: Path, tmp_path: Path, name: str, *, broken: bool = False) -> tuple:
    settings = RewearSettings(home=home)
    client, experiment_id = configure_mlflow(settings, "test")
    bundle = write_tiny_bundle(tmp_path / name)
    if broken:  # a bundle this code cannot read
        (bundle / "bundle.json").write_text(json.dumps({"format": 999}))
    run = client.create_run(experiment_id, tags={"rewear.config_hash": "abc"})
    tags = {"snapshot_id": "s1", "git_commit": "c1", "config_hash": "abc", "dataset": "tiny"}
    registered = log_and_register(
        client,
        run.info.run_id,
        bundle,
        "rewear",
        tags,
        example_user_id=None if broken else "u1",
    )
    return client, settings, registered, bundle


def _gate(client, settings, registered, bundle, compared, force=False):
    return promotion.run_gate(
        client,
        settings.tracking_uri,
        "rewear",
        registered.version,
        bundle,
        "u1",
        compared,
        METRICS,
        PromotionConfig(latency_requests=10, max_p99_latency_ms=10_000),
        settings.locks,
        force,
    )


def test_gate_promotes_the_first_version_then_keeps_it_against_a_worse_one(rewear_home, tmp_path):
    client, settings, first, bundle = _register(rewear_home, tmp_path, "v1")
    # Registration alone never sets champion, not even for the first version.
    assert first.aliases == [CHALLENGER]
    assert current_alias_version(client, "rewear", CHAMPION) is None
    assert client.get_model_version("rewear", "1").tags["parent_run_id"] == (
        client.get_model_version("rewear", "1").run_id
    )

    verdict = _gate(client, settings, first, bundle, None)
    assert verdict.decision == "promoted"
    assert verdict.smoke.ok and verdict.smoke.requests == 10
    assert 0 < verdict.smoke.p50_ms <= verdict.smoke.p99_ms
    assert current_alias_version(client, "rewear", CHAMPION) == 1
    tags = client.get_model_version("rewear", "1").tags
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.champion_version"] == "none"
    assert tags["promotion.smoke.passed"] == "true"

    client, settings, second, bundle = _register(rewear_home, tmp_path, "v2")
    verdict = _gate(client, settings, second, bundle, comparison(low=-0.05, difference=-0.03))
    assert verdict.decision == "rejected"
    assert current_alias_version(client, "rewear", CHAMPION) == 1
    assert sorted(client.get_model_version("rewear", "2").aliases) == [CHALLENGER]
    tags = client.get_model_version("rewear", "2").tags
    assert tags["promotion.decision"] == "rejected"
    assert tags["promotion.forced"] == "false"
    assert tags["promotion.ndcg_at_10.low"] == "-0.050000"
    assert tags["promotion.ndcg_at_10.difference"] == "-0.030000"
    assert tags["promotion.ndcg_at_10.high"] == "-0.020000"
    assert tags["promotion.ndcg_at_10.challenger"] == "0.170000"
    assert tags["promotion.ndcg_at_10.champion"] == "0.200000"
    assert tags["promotion.evaluated_users"] == "500"
    assert "worse than champion v1" in tags["promotion.reasons"]

    verdict = _gate(client, settings, second, bundle, comparison(low=-0.05), force=True)
    assert verdict.decision == "forced"
    assert current_alias_version(client, "rewear", CHAMPION) == 2
    assert client.get_model_version("rewear", "2").tags["promotion.forced"] == "true"


def test_a_version_that_does_not_load_in_a_fresh_process_is_never_promoted(rewear_home, tmp_path):
    client, settings, registered, bundle = _register(rewear_home, tmp_path, "bad", broken=True)
    verdict = _gate(client, settings, registered, bundle, None, force=True)
    assert verdict.decision == "rejected"
    assert not verdict.smoke.ok
    assert any("fresh process" in reason for reason in verdict.reasons)
    assert "has format 999" in " ".join(verdict.smoke.problems)
    assert current_alias_version(client, "rewear", CHAMPION) is None


def test_a_stale_comparison_does_not_move_champion(rewear_home, tmp_path):
    client, settings, first, bundle = _register(rewear_home, tmp_path, "v1")
    _gate(client, settings, first, bundle, None)
    client, settings, second, bundle = _register(rewear_home, tmp_path, "v2")
    # This run compared with "v3", but the champion is v1: someone promoted meanwhile.
    stale = {**comparison(low=0.01, difference=0.02), "champion_version": 3}
    verdict = _gate(client, settings, second, bundle, stale)
    assert verdict.decision == "rejected"
    assert "champion moved to v1" in " ".join(verdict.reasons)
    assert current_alias_version(client, "rewear", CHAMPION) == 1


def test_two_runs_that_compared_with_the_same_champion_cannot_both_move_it(
    rewear_home, tmp_path, monkeypatch
):
    """A refresh and a retrain each checked v1 and both moved champion within 0.5 s: the
    check and the move now happen under one lock, so the second sees the first's move."""
    import threading
    import time

    from components.registry.champion_alias import apply_decision
    from components.registry.promotion_decision import PromotionDecision

    client, settings, first, bundle = _register(rewear_home, tmp_path, "v1")
    _gate(client, settings, first, bundle, None)
    versions = [_register(rewear_home, tmp_path, name)[2].version for name in ("v2", "v3")]
    tag = MlflowClient.set_model_version_tag

    def slow_tag(self, *args, **kwargs):  # widens the window between the check and the move
        time.sleep(0.05)
        return tag(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_model_version_tag", slow_tag)
    decisions = {}

    def promote(version: int) -> None:
        won = PromotionDecision("promoted", 1, [], SmokeResult(ok=True))
        decisions[version] = apply_decision(
            MlflowClient(), "rewear", version, won, "ndcg@10", locks=rewear_home / "locks"
        )

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = sorted(decision.decision for decision in decisions.values())
    assert outcomes == ["promoted", "rejected"]
    winner = next(v for v, d in decisions.items() if d.decision == "promoted")
    assert current_alias_version(client, "rewear", CHAMPION) == winner
    loser = next(d for d in decisions.values() if d.decision == "rejected")
    assert f"champion moved to v{winner}" in " ".join(loser.reasons)


def test_pyfunc_answers_users_and_sessions_and_refuses_bad_requests(rewear_home, tmp_path):
    import mlflow

    _, settings, registered, _ = _register(rewear_home, tmp_path, "v1")
    mlflow.set_tracking_uri(settings.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/rewear/{registered.version}")
    request = pd.DataFrame({"user_id": ["u1", None], "recent_item_ids": [None, ["i9"]]})
    answer = model.predict(request, params={"k": 2, "exclude_item_ids": ["i6"]})
    assert answer.groupby("request")["item_id"].agg(list).tolist() == [["i1", "i2"], ["i5", "i7"]]
    for frame, params, message in [
        (pd.DataFrame({"user_id": ["u1"]}), {"k": 0}, "k must be between 1 and 1000"),
        (pd.DataFrame({"other": ["u1"]}), None, "needs a `user_id` column"),
        (pd.DataFrame({"user_id": [None]}), None, "row 0 has no user_id"),
        (pd.DataFrame({"user_id": ["u1"]}), {"k": "ten"}, "k"),
    ]:
        with pytest.raises(MlflowException, match=message) as raised:
            model.predict(frame, params=params)
        assert raised.value.get_http_status_code() == 400


def test_a_refresh_is_promoted_only_when_it_answers_on_sale_loads_and_is_fast():
    from components.config import PromotionConfig
    from components.registry.promotion import decide_refresh

    config = PromotionConfig()
    fast = SmokeResult(ok=True, requests=50, p50_ms=2.0, p99_ms=5.0)
    passed = decide_refresh(3, fast, [], config)
    assert passed.decision == "promoted" and passed.champion_version == 3
    assert [check.name for check in passed.checks] == [
        "smoke",
        "p99 latency (ms)",
        "available answers",
    ]

    leaked = decide_refresh(3, fast, ["2 unavailable listings recommended, e.g. ['i1']"], config)
    assert leaked.decision == "rejected"
    assert leaked.reasons == ["2 unavailable listings recommended, e.g. ['i1']"]

    broken = decide_refresh(3, SmokeResult(ok=False, problems=["exit code 1: boom"]), [], config)
    assert broken.decision == "rejected"
    assert "does not load or answer in a fresh process: exit code 1: boom" in broken.reasons[0]


def off_policy_comparison(relative: float, low: float, high: float) -> dict:
    return {
        **comparison(low=0.0),
        "off_policy": {
            "requests": 20_000,
            "difference": {"estimator": "snips", "relative": relative, "low": low, "high": high},
        },
    }


@pytest.mark.parametrize(
    ("low", "high", "decision"),
    [
        (-0.40, -0.12, "rejected"),  # clearly worse than -10%: held back before any traffic
        (-0.30, -0.05, "promoted"),  # worse, but not clearly beyond the margin
        (-0.05, 0.20, "promoted"),
    ],
)
def test_the_off_policy_check_holds_back_a_clearly_worse_challenger(
    low: float, high: float, decision: str
) -> None:
    verdict = decide(
        off_policy_comparison((low + high) / 2, low, high), METRICS, GOOD_SMOKE, PromotionConfig()
    )
    assert verdict.decision == decision
    check = next(c for c in verdict.checks if c.name == "off-policy vs champion")
    assert check.passed == (decision == "promoted")
    tags = decision_tags(verdict, "ndcg@10")
    assert tags["promotion.off-policy_vs_champion.passed"] == str(decision == "promoted").lower()
    if decision == "rejected":
        assert "sold listings per session -26.0%" in tags["promotion.reasons"]


def test_a_skipped_off_policy_check_passes_and_says_why() -> None:
    skipped = {**comparison(low=0.0), "off_policy": {"skipped": "no explored sessions"}}
    verdict = decide(skipped, METRICS, GOOD_SMOKE, PromotionConfig())
    check = next(c for c in verdict.checks if c.name == "off-policy vs champion")
    assert check.passed and "no explored sessions" in check.detail
    tags = decision_tags(verdict, "ndcg@10")
    assert tags["promotion.off-policy_vs_champion.skipped"] == "no explored sessions"
