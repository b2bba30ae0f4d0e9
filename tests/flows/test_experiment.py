"""Online experiments end to end on a 1,000-user synthetic market: the simulated market
uses the experiment model, the readout decides, and only a passing readout moves
`champion`; a killed run moves nothing; the model served by `mlflow models serve` logs
exactly what it answered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from components.config import load_config
from components.data.market_simulation import MarketSimulation
from components.experiments.exposure_log import read_exposures
from components.experiments.schema import CONTROL, TREATMENT

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "synthetic.yaml"
#: A market small enough to train on in seconds; the popularity baseline sells about a
#: tenth of what the two-stage model sells through its lists, so 1,000 users decide it.
MARKET = {
    "source.n_users": 1000,
    "experiment.min_units": 200,
    "evaluation.bootstrap_resamples": 50,
}
POPULARITY = {**MARKET, "model.candidates.sources": ["popularity"], "model.ranker.enabled": False}

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.slow]


@pytest.fixture(scope="module")
def market_home(
    tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path, prefect_harness: None
) -> Iterator[Path]:
    """A registry holding v1, the popularity baseline (champion: the first version), and
    v2, the default two-stage model (challenger: online promotion holds it there)."""
    import shutil

    from flows.retrain import retrain

    home = tmp_path_factory.mktemp("experiment-home")
    shutil.copy(migrated_mlflow_db, home / "mlflow.db")
    saved = os.environ.get("REWEAR_HOME")
    os.environ["REWEAR_HOME"] = str(home)
    try:
        first = retrain(config_path=str(CONFIG), overrides=POPULARITY)
        second = retrain(config_path=str(CONFIG), overrides=MARKET)
    finally:
        if saved is None:
            os.environ.pop("REWEAR_HOME")
        else:
            os.environ["REWEAR_HOME"] = saved
    assert first["model"]["aliases"] == ["challenger", "champion"]
    assert second["model"]["version"] == 2 and second["model"]["aliases"] == ["challenger"]
    yield home


def _client():
    from mlflow import MlflowClient

    from components.settings import RewearSettings

    uri = RewearSettings().tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _champion() -> int:
    return int(_client().get_model_version_by_alias("rewear", "champion").version)


def test_the_readout_promotes_a_better_challenger_holds_back_a_worse_one_and_a_kill_moves_nothing(
    market_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWEAR_HOME", str(market_home))
    from flows.experiment import experiment_simulate
    from flows.retrain import retrain

    # A run killed before its decision: the experiment model exists, champion has not moved.
    command = [str(Path(sys.executable).with_name("rewear")), "experiment", "simulate"]
    command += ["--config", str(CONFIG)]
    for key, value in MARKET.items():
        command += ["--set", f"{key}={value}"]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env={**os.environ, "REWEAR_HOME": str(market_home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not _client().search_model_versions(
        "name='rewear-experiment'"
    ):
        assert process.poll() is None, "the simulate command ended before it was killed"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert _champion() == 1
    assert not any(key.startswith("promotion.online") for key in _version_tags(2))
    from components.pipeline.experiments import stop_live_experiment

    assert stop_live_experiment(load_config(CONFIG, MARKET)) is not None

    # The two-stage model against the popularity baseline: promoted through the readout.
    better = experiment_simulate(config_path=str(CONFIG), overrides=MARKET)
    assert better["verdict"] == "promoted", better["reasons"]
    assert (better["control_version"], better["treatment_version"]) == (1, 2)
    assert better["decided_on_day"] >= 7  # experiment.min_days
    readout = better["readout"]
    assert readout["health"]["passed"] and readout["relative_low"] > 0
    assert better["global_effect"]["relative"] > 1  # the two-stage model sells far more
    assert readout["interference_bias"] == pytest.approx(
        readout["primary_fixed"]["difference"] - better["global_effect"]["primary"]
    )
    assert _champion() == 2
    tags = _version_tags(2)
    assert tags["promotion.online.decision"] == "promoted"
    assert tags["promotion.online.champion_version"] == "1"
    assert float(tags["promotion.online.purchases.relative_low"]) > 0
    experiment = _client().get_model_version("rewear-experiment", "2")
    assert experiment.tags["experiment.status"] == "ended"
    assert experiment.tags["experiment.verdict"] == "promoted"
    assert "live" not in experiment.aliases

    # The popularity baseline registered again, as a challenger: held back.
    retrain(config_path=str(CONFIG), overrides=POPULARITY)
    worse = experiment_simulate(config_path=str(CONFIG), overrides=MARKET)
    assert (worse["control_version"], worse["treatment_version"]) == (2, 3)
    assert worse["verdict"] == "rejected"
    assert worse["readout"]["relative_low"] < -0.02  # non-inferiority not shown
    assert worse["readout"]["primary"]["difference"] < 0
    assert _champion() == 2
    assert _version_tags(3)["promotion.online.decision"] == "rejected"

    # Each readout's figures and plot are in the experiment's MLflow run.
    client = _client()
    online = client.get_experiment_by_name("rewear-online")
    runs = client.search_runs(
        [online.experiment_id], f"tags.`rewear.experiment_id` = '{worse['experiment_id']}'"
    )
    assert runs and "primary_relative_low" in runs[0].data.metrics
    logged = {artifact.path for artifact in client.list_artifacts(runs[0].info.run_id, "readouts")}
    assert "readouts/primary_interval.png" in logged


def test_the_served_experiment_model_logs_exactly_what_it_answered(
    market_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One simulated day through `mlflow models serve`: every answer's slots are in the
    exposure log, and the readout reads that log."""
    monkeypatch.setenv("REWEAR_HOME", str(market_home))
    from components.pipeline.experiments import read_out_experiment, start_experiment
    from components.serving.server import model_server
    from components.settings import RewearSettings

    config = load_config(
        CONFIG, {**MARKET, "experiment.simulation.days": 1, "experiment.min_days": 1}
    )
    simulation = MarketSimulation.from_source(config.source, config.experiment.simulation)
    started = start_experiment(config, 2, 1, started_at=simulation.start)
    answered: list[pd.DataFrame] = []

    def served(base: str):
        def policy(users, k, at, sold):
            body = {
                "dataframe_records": [{"user_id": user} for user in users],
                "params": {"k": k, "served_at": at.isoformat(), "exclude_item_ids": sorted(sold)},
            }
            request = urllib.request.Request(
                f"{base}/invocations",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = pd.DataFrame(json.loads(response.read())["predictions"])
            answered.append(answer)
            grouped = answer.groupby("request")["item_id"].agg(list)
            return [list(grouped.get(row, [])) for row in range(len(users))]

        return policy

    tracking = RewearSettings().tracking_uri
    with model_server(started.model_uri, tracking, tmp_path / "server.log") as base:
        result = simulation.run(served(base))
    # The server stopped cleanly (SIGTERM): its buffer was flushed at exit.
    answers = pd.concat(answered, ignore_index=True)
    logged = read_exposures(started.spec.exposure_log, experiment_id=started.spec.experiment_id)
    assert len(logged) == len(answers) > 0
    merged = answers.merge(
        logged,
        left_on=["request_id", "rank"],
        right_on=["request_id", "position"],
        suffixes=("", "_logged"),
        validate="one_to_one",
    )
    assert len(merged) == len(answers)
    assert (merged["item_id"] == merged["item_id_logged"]).all()
    assert (merged["variant"] == merged["variant_logged"]).all()
    assert (merged["user_id"] == merged["unit_id"]).all()
    assert set(merged["variant"]) == {CONTROL, TREATMENT}
    assert (merged["model_version"] == merged["variant"].map({CONTROL: "2", TREATMENT: "1"})).all()
    assert merged["served_at"].between(result.start, result.end).all()
    outcome = read_out_experiment(
        config,
        started,
        logged,
        pd.concat([simulation.history, result.interactions], ignore_index=True),
        result.items,
        result.end,
        apply=False,
    )
    assert outcome.readout.requests == answers["request_id"].nunique()
    assert outcome.readout.health.log_completeness == 1.0
    assert outcome.readout.health.sold_listings_served == 0
    from components.pipeline.experiments import stop_live_experiment

    stop_live_experiment(config)


def _version_tags(version: int) -> dict[str, str]:
    return _client().get_model_version("rewear", str(version)).tags
