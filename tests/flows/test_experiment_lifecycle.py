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
    assert started["serve_command"].startswith(
        "mlflow models serve -m models:/rewear-experiment/1 --env-manager local"
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
