"""The promotion gate against a real MLflow registry: decisions, tags, the champion alias,
and the fresh-process smoke test of what was registered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from components.config import PromotionConfig
from components.registry import promotion
from components.registry.promotion import SmokeResult, decide
from components.registry.registration import (
    CHALLENGER,
    CHAMPION,
    current_alias_version,
    log_and_register,
)
from components.registry.tracking import configure_mlflow
from components.settings import RewearSettings
from tests.components.registry.conftest import write_tiny_bundle

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
