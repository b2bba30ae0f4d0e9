"""The promotion gate inside `retrain`: a growing marketplace retrained three times, and a
run killed between registration and promotion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from components.registry.lineage import walk_lineage
from tests.flows.conftest import small_market, write_market

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[2]
#: Faster runs: what the gate needs (a model, the comparison), not every source or baseline.
LEAN = {
    "model.candidates.sources": ["popularity"],
    "model.ranker.enabled": False,
    "evaluation.baselines.enabled": ["popularity"],
    "evaluation.bootstrap_resamples": 300,
}
#: A deliberately degraded model: only purchases count, and purchased listings are sold,
#: so every listing on sale scores 0 and the ranking is arbitrary.
DEGRADED = {
    "model.candidates.popularity.event_weights": {
        "view": 0.0,
        "like": 0.0,
        "save": 0.0,
        "add_to_bag": 0.0,
        "purchase": 1.0,
        "interaction": 0.0,
        "rating": 0.0,
    }
}


def _champion(client: MlflowClient) -> int:
    return int(client.get_model_version_by_alias("rewear", "champion").version)


@pytest.mark.slow
def test_a_degraded_challenger_stays_challenger_and_a_better_one_becomes_champion(
    rewear_home, registry_client, tmp_path
):
    from flows.retrain import retrain

    market = small_market(n_days=26)
    start = market.interactions["ts"].min().normalize()
    days = [start + pd.Timedelta(days=16), start + pd.Timedelta(days=21), None]
    configs = [write_market(market, tmp_path / f"m{n}", until) for n, until in enumerate(days)]

    # Week 1: a degraded model is the first version: nothing to beat, it becomes champion.
    first = retrain(config_path=str(configs[0]), overrides={**LEAN, **DEGRADED})
    assert first["promotion"]["decision"] == "promoted"
    assert first["model"]["aliases"] == ["challenger", "champion"]

    # Week 2: a sound model, compared on days neither has seen, wins.
    second = retrain(config_path=str(configs[1]), overrides=LEAN)
    comparison = second["champion_comparison"]
    assert comparison["comparable"] is True and comparison["champion_version"] == 1
    interval = comparison["intervals"]["ndcg@10"]
    assert interval["low"] > 0, interval
    assert second["promotion"]["decision"] == "promoted"
    assert second["promoted"] is True
    client = registry_client
    assert _champion(client) == 2

    # Week 3: the degraded model again: registered, tagged, but champion stays on v2.
    third = retrain(config_path=str(configs[2]), overrides={**LEAN, **DEGRADED})
    interval = third["champion_comparison"]["intervals"]["ndcg@10"]
    assert interval["high"] < 0, interval
    assert third["status"] == "completed"
    assert third["model"] == {"name": "rewear", "version": 3, "aliases": ["challenger"]}
    assert third["promotion"]["decision"] == "rejected"
    assert third["promoted"] is False
    assert any("worse than champion v2" in reason for reason in third["promotion"]["reasons"])
    assert _champion(client) == 2
    tags = client.get_model_version("rewear", "3").tags
    assert tags["promotion.decision"] == "rejected"
    assert float(tags["promotion.ndcg_at_10.low"]) == pytest.approx(interval["low"], abs=1e-6)
    assert client.get_model_version("rewear", "2").tags["promotion.decision"] == "promoted"
    # The exposure figures ride along in the comparison, the report and the tags.
    gini = third["promotion"]["exposure"]["gini_sellers@20"]
    assert gini == pytest.approx(
        {
            "challenger": third["champion_comparison"]["intervals"]["gini_sellers@20"]["model"],
            "champion": third["champion_comparison"]["intervals"]["gini_sellers@20"]["other"],
            **{k: third["champion_comparison"]["intervals"]["gini_sellers@20"][k] for k in
               ("difference", "low", "high")},
            "bound": 0.05,
        }
    )  # fmt: skip
    assert float(tags["promotion.gini_sellers_at_20.low"]) == pytest.approx(gini["low"], abs=1e-6)
    assert "promotion.new_item_exposure_at_20.high" in tags

    # Week 3 again: a challenger that only recommends the two biggest sellers' listings.
    # Even with NDCG let through (margin 1), the exposure guard holds it back.
    items = market.items
    biggest = items["seller_id"].value_counts().index[:2]
    others = tuple(items.loc[~items["seller_id"].isin(biggest), "item_id"].astype(str))
    concentrated = retrain(
        config_path=str(configs[2]),
        overrides={
            **LEAN,
            "model.candidates.blocked_item_ids": list(others),
            "registry.promotion.margin": 1.0,
        },
    )
    assert concentrated["promotion"]["decision"] == "rejected"
    failed = [c["name"] for c in concentrated["promotion"]["checks"] if not c["passed"]]
    assert failed == ["gini_sellers@20 vs champion"], concentrated["promotion"]["reasons"]
    gini = concentrated["promotion"]["exposure"]["gini_sellers@20"]
    assert gini["low"] > 0.05 and gini["challenger"] > gini["champion"]
    tags = client.get_model_version("rewear", "4").tags
    assert tags["promotion.gini_sellers_at_20_vs_champion.passed"] == "false"
    assert "seller-exposure Gini (gini_sellers@20) clearly higher" in tags["promotion.reasons"]
    assert float(tags["promotion.gini_sellers_at_20.challenger"]) == pytest.approx(
        gini["challenger"], abs=1e-6
    )
    assert _champion(client) == 2

    # Lineage: from models:/rewear@champion back to the snapshot that trained it.
    lineage = walk_lineage(client, "rewear", "champion", rewear_home / "snapshots")
    assert lineage.version == 2
    assert lineage.run_id == second["run_id"]
    assert lineage.snapshot.snapshot_id == second["snapshot_id"] != first["snapshot_id"]
    assert lineage.snapshot.path == rewear_home / "snapshots" / second["snapshot_id"]
    assert lineage.config_hash == second["config_hash"]
    assert lineage.git_commit == second["git_commit"]
    assert lineage.run_status == "FINISHED"
    assert lineage.metrics["ndcg_at_10"] == pytest.approx(second["metrics"]["ndcg@10"], abs=1e-6)


@pytest.mark.slow
def test_a_run_killed_between_registration_and_promotion_leaves_champion_in_place(
    rewear_home, registry_client, tmp_path
):
    from prefect.settings import PREFECT_API_URL

    from flows.retrain import retrain

    config = write_market(small_market(), tmp_path / "market")
    first = retrain(config_path=str(config), overrides=LEAN)
    assert first["promotion"]["decision"] == "promoted"

    # The same flow in another process, forced to promote, SIGKILLed as the gate starts.
    script = (
        "import os, signal\n"
        "from components.registry import promotion\n"
        "def killed(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "promotion.run_gate = killed\n"
        "from flows.retrain import retrain\n"
        f"retrain(config_path={str(config)!r}, overrides={LEAN!r}, force_promote=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == -9, done.stdout[-2000:] + done.stderr[-2000:]

    client = registry_client
    registered = client.get_model_version("rewear", "2")  # registration had happened
    assert registered.aliases == ["challenger"]
    assert not [tag for tag in registered.tags if tag.startswith("promotion.")]
    assert _champion(client) == 1
