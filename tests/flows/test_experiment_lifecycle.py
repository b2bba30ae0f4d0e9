"""`experiment start | readout | stop` against a registered champion: one live experiment
at a time, clear messages when there is nothing to read. (The flows are called directly:
run through typer's test runner, Prefect's console handler would keep the stream of the
first call, which the runner closes after it.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import load_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic.yaml"
pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_start_registers_the_experiment_model_and_says_how_to_serve_it(
    tiny_champion, registry_client
) -> None:
    from flows.experiment import experiment_start

    started = experiment_start(config_path=str(CONFIG))
    assert (started["control_version"], started["treatment_version"]) == (1, 1)
    assert started["design"] == "ab"
    assert (
        started["serve_command"] == "rewear serve --model models:/rewear-experiment/1 --port 5001"
    )
    version = registry_client.get_model_version_by_alias("rewear-experiment", "live")
    assert version.tags["experiment.status"] == "live"
    assert version.tags["experiment.control_version"] == "1"
    assert version.tags["experiment.exposure_log"].endswith("exposures")


def test_one_experiment_is_live_at_a_time_and_an_idle_readout_says_so(
    tiny_champion, registry_client
) -> None:
    from components.pipeline.experiments import (
        read_out_live,
        start_experiment,
        stop_live_experiment,
    )
    from components.registry.experiment_registration import ExperimentStateError

    config = load_config(CONFIG)
    started = start_experiment(config)
    with pytest.raises(ExperimentStateError, match="is still live: read it out"):
        start_experiment(config)
    with pytest.raises(ValueError, match="no exposures logged for the experiment"):
        read_out_live(config)
    assert stop_live_experiment(config) == started.spec.experiment_id
    tags = registry_client.get_model_version("rewear-experiment", "1").tags
    assert (tags["experiment.status"], tags["experiment.verdict"]) == ("ended", "stopped")
    assert read_out_live(config) is None
    assert stop_live_experiment(config) is None
    assert str(registry_client.get_model_version_by_alias("rewear", "champion").version) == "1"


def test_start_without_a_champion_says_to_retrain_first(rewear_home) -> None:
    from components.pipeline.experiments import start_experiment

    with pytest.raises(ValueError, match="rewear@champion is not set: run `rewear retrain` first"):
        start_experiment(load_config(CONFIG))


def test_off_policy_evaluation_without_an_explored_log_is_refused_with_the_fix(
    tiny_champion,
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(
        app, ["evaluate", "--off-policy", "--model", "models:/rewear/1", "--config", str(CONFIG)]
    )
    assert result.exit_code == 2
    assert "no explored lists in the exposure log" in result.output
    assert "exploration.temperature > 0" in result.output
    unknown = CliRunner().invoke(
        app, ["evaluate", "--off-policy", "--model", "models:/rewear@nope", "--config", str(CONFIG)]
    )
    assert unknown.exit_code == 2
    assert "names no registered version" in unknown.output


def test_an_explore_experiment_serves_champion_alone_and_its_readout_reports_the_log(
    tiny_champion, registry_client
) -> None:
    from components.pipeline.experiments import read_out_live, start_experiment

    config = load_config(CONFIG, {"experiment.design": "explore"})
    started = start_experiment(config)
    assert (started.spec.control_version, started.spec.treatment_version) == (1, 1)
    assert started.spec.exploration_temperature == 0.3
    tags = registry_client.get_model_version("rewear-experiment", "1").tags
    assert tags["experiment.design"] == "explore"
    summary = read_out_live(config)
    assert summary is not None
    assert summary["verdict"] == "logging" and summary["sessions"] == 0
