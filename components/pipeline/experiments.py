"""The online experiment's jobs: start one, read it out (and let the readout decide), and
stop it. Wiring only: the statistics are `components.experiments`, the served model
`components.serving.experiment`, the verdict `components.registry.online_promotion`; the
whole loop against the simulated market is `components.pipeline.experiment_simulation`.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from components.config import ExperimentConfig, PipelineConfig
from components.data.sources import load_source
from components.experiments.exposure_log import open_exposure_sink
from components.experiments.readout import Readout, read_out
from components.experiments.report import interval_figure
from components.registry.champion_alias import ONLINE_TAG_PREFIX, apply_decision
from components.registry.experiment_registration import (
    end_experiment,
    experiment_model_name,
    live_experiment,
    register_experiment,
)
from components.registry.online_promotion import OnlineVerdict, decide_online
from components.registry.registration import CHALLENGER, CHAMPION, current_alias_version
from components.registry.tracking import close_run, configure_mlflow
from components.serving.experiment import ExperimentSpec
from components.settings import RewearSettings

logger = logging.getLogger(__name__)
#: MLflow experiment (tracking) holding one run per online experiment: its readouts.
ONLINE_SUFFIX = "-online"


@dataclass(frozen=True)
class StartedExperiment:
    spec: ExperimentSpec
    version: int
    run_id: str

    @property
    def model_uri(self) -> str:
        return f"models:/{experiment_model_name(self.spec.model_name)}/{self.version}"

    @property
    def serve_command(self) -> str:
        return f"rewear serve --model {self.model_uri} --port 5001"


def exposure_log_uri(config: ExperimentConfig, settings: RewearSettings) -> str:
    return config.exposure_log or str(settings.root / "exposures")


def start_experiment(
    config: PipelineConfig,
    control_version: int | None = None,
    treatment_version: int | None = None,
    started_at: pd.Timestamp | None = None,
    experiment_id: str | None = None,
) -> StartedExperiment:
    """Pin the arms (default: `champion` against `challenger`), register the experiment
    model with alias `live` and open its MLflow run for the readouts."""
    settings = RewearSettings()
    client, _ = configure_mlflow(settings, config.registry.experiment)
    name = config.registry.model_name
    control = control_version or _alias(client, name, CHAMPION)
    if config.experiment.design == "explore":  # one arm: the logging period's champion
        treatment = control
    else:
        treatment = treatment_version or _alias(client, name, CHALLENGER)
    for version in (control, treatment):
        client.get_model_version(name, str(version))  # an unknown version fails here
    started = started_at or pd.Timestamp.now(tz="UTC")
    identifier = experiment_id or f"exp-{started:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    experiment = config.experiment
    spec = ExperimentSpec(
        experiment_id=identifier,
        model_name=name,
        control_version=control,
        treatment_version=treatment,
        design=experiment.design,
        salt=experiment.salt or identifier,
        treatment_share=experiment.treatment_share,
        exposure_log=exposure_log_uri(experiment, settings),
        started_at=started.isoformat(),
        exploration_top_m=experiment.exploration.top_m,
        exploration_temperature=experiment.exploration.temperature,
    )
    _, tracking = configure_mlflow(settings, config.registry.experiment + ONLINE_SUFFIX)
    run = client.create_run(
        tracking,
        run_name=identifier,
        # Not owned by this process: the run lives as long as the experiment, across the
        # readouts' processes (a retrain must not close it as abandoned).
        tags={
            "rewear.kind": "experiment",
            "rewear.experiment_id": identifier,
            "rewear.control_version": str(control),
            "rewear.treatment_version": str(treatment),
            "rewear.design": spec.design,
        },
    )
    client.log_dict(run.info.run_id, experiment.model_dump(mode="json"), "experiment_config.json")
    with tempfile.TemporaryDirectory(prefix="rewear-experiment-") as scratch:
        version = register_experiment(client, run.info.run_id, spec, Path(scratch))
    logger.info(
        "experiment %s started: v%s (control) vs v%s (treatment), %s, served by %s",
        identifier,
        control,
        treatment,
        spec.design,
        f"models:/{experiment_model_name(name)}/{version}",
    )
    return StartedExperiment(spec, version, run.info.run_id)


def _alias(client: MlflowClient, name: str, alias: str) -> int:
    version = current_alias_version(client, name, alias)
    if version is None:
        raise ValueError(
            f"models:/{name}@{alias} is not set: run `rewear retrain` first, or pass the "
            "versions to compare (--control / --treatment)"
        )
    return version


@dataclass
class ReadoutResult:
    readout: Readout
    verdict: OnlineVerdict
    #: True when the verdict was applied (champion moved, or the experiment ended).
    applied: bool = False
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def aa(self) -> bool:
        """One version in both arms: a check of the loop that decides nothing."""
        return self.figures.get("control_version") == self.figures.get("treatment_version")

    def summary(self) -> dict[str, Any]:
        return {
            "experiment_id": self.readout.experiment_id,
            "verdict": "a/a" if self.aa else self.verdict.verdict,
            "reasons": self.verdict.reasons,
            "applied": self.applied,
            "readout": self.readout.to_dict(),
            **self.figures,
        }


def read_out_experiment(
    config: PipelineConfig,
    started: StartedExperiment,
    exposures: pd.DataFrame,
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    as_of: pd.Timestamp,
    global_effect: float | None = None,
    apply: bool = True,
) -> ReadoutResult:
    """Read the experiment out at `as_of`, log the figures to its MLflow run, and when the
    verdict is final (and `apply`), move `champion` through the promotion code and end the
    experiment. An A/A experiment (one version in both arms) never moves anything."""
    spec, experiment = started.spec, config.experiment
    start = pd.Timestamp(spec.started_at)
    readout = read_out(
        exposures,
        interactions[interactions["ts"] >= start],
        interactions[interactions["ts"] < start],
        items,
        experiment,
        start,
        as_of,
        spec.treatment_share,
        spec.design,
        global_effect,
    )
    verdict = decide_online(readout, experiment, config.registry.promotion, spec.control_version)
    settings = RewearSettings()
    client, _ = configure_mlflow(settings, config.registry.experiment)
    log_readout(client, started.run_id, readout, verdict)
    result = ReadoutResult(
        readout,
        verdict,
        figures={
            "control_version": spec.control_version,
            "treatment_version": spec.treatment_version,
        },
    )
    if apply and verdict.decision is not None:
        if spec.control_version != spec.treatment_version:
            apply_decision(
                client,
                spec.model_name,
                spec.treatment_version,
                verdict.decision,
                readout.primary_metric,
                locks=RewearSettings().locks,
                tag_prefix=ONLINE_TAG_PREFIX,
            )
        end_experiment(client, spec.model_name, started.version, verdict.verdict)
        close_run(client, started.run_id, failed=False)
        result.applied = True
    return result


def log_readout(
    client: MlflowClient, run_id: str, readout: Readout, verdict: OnlineVerdict
) -> None:
    """The readout's figures as metrics of the experiment's run (step: whole days), and
    the plot of the primary interval over days."""
    import matplotlib.pyplot as plt

    step = int(np.floor(readout.days))
    primary = readout.primary
    metrics = {
        "units": float(sum(readout.units.values())),
        "srm_p_value": readout.health.srm_p_value,
        "log_completeness": readout.health.log_completeness,
        "primary_difference": primary.difference,
        "primary_low": primary.low,
        "primary_high": primary.high,
        "primary_relative": primary.relative,
        "primary_relative_low": readout.relative_low,
        "primary_control_mean": primary.control_mean,
        "primary_treatment_mean": primary.treatment_mean,
    }
    for name, reduction in readout.cuped_variance_reduction.items():
        metrics[f"cuped_variance_reduction_{name}"] = reduction
    for name, guard in readout.guardrails.items():
        metrics[f"{name}_difference"] = guard.difference
    if readout.preference is not None:
        metrics["preference_share_treatment"] = readout.preference.share_treatment
    if readout.interference_bias is not None:
        metrics["interference_bias"] = readout.interference_bias
    for key, value in metrics.items():
        if np.isfinite(value):
            client.log_metric(run_id, key, float(value), step=step)
    figure = interval_figure(readout.daily, readout.primary_metric)
    client.log_figure(run_id, figure, "readouts/primary_interval.png")
    plt.close(figure)
    client.set_tag(run_id, "rewear.verdict", verdict.verdict)
    client.log_dict(
        run_id, {**readout.to_dict(), "verdict": verdict.verdict}, f"readouts/day-{step:03d}.json"
    )


def read_out_live(
    config: PipelineConfig, as_of: pd.Timestamp | None = None
) -> dict[str, Any] | None:
    """The daily readout of the live experiment from its exposure log and the source's
    interactions (the deployment's job); applies the verdict when it is final. None when
    no experiment is live (the daily deployment then has nothing to do)."""
    settings = RewearSettings()
    client, _ = configure_mlflow(settings, config.registry.experiment)
    live = live_experiment(client, config.registry.model_name)
    if live is None:
        return None
    version, spec = live
    if spec.design == "explore":
        # A logging period for off-policy evaluation: one arm, nothing to decide.
        logged = open_exposure_sink(spec.exposure_log).read(experiment_id=spec.experiment_id)
        return {
            "verdict": "logging",
            "experiment_id": spec.experiment_id,
            "design": spec.design,
            "control_version": spec.control_version,
            "sessions": int(logged["request_id"].nunique()),
            "units": int(logged["unit_id"].nunique()),
        }
    run = client.search_runs(
        [client.get_experiment_by_name(config.registry.experiment + ONLINE_SUFFIX).experiment_id],
        filter_string=f"tags.`rewear.experiment_id` = '{spec.experiment_id}'",
    )[0]
    started = StartedExperiment(spec, version, run.info.run_id)
    tables = load_source(config.source)
    moment = as_of or pd.Timestamp.now(tz="UTC")
    exposures = open_exposure_sink(spec.exposure_log).read(experiment_id=spec.experiment_id)
    return read_out_experiment(
        config, started, exposures, tables.interactions, tables.items, moment
    ).summary()


def stop_live_experiment(config: PipelineConfig) -> str | None:
    """End the live experiment without a verdict (`stopped`); its id, or None when none
    was live. Nothing moves in the model registry."""
    client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
    live = live_experiment(client, config.registry.model_name)
    if live is None:
        return None
    version, spec = live
    end_experiment(client, config.registry.model_name, version, "stopped")
    return spec.experiment_id
