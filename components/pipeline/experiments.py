"""The online experiment's jobs: start one, read it out (and let the readout decide), and
run the whole loop against the simulated market. Wiring only: the statistics are
`components.experiments`, the served model `components.serving.experiment`, the users
`components.data.market_simulation`, the verdict `components.registry.online_promotion`.
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

from components.config import ExperimentConfig, PipelineConfig, SyntheticSourceConfig
from components.data.market_simulation import MarketSimulation, SimulationResult
from components.data.sources import load_source
from components.experiments.exposure_log import ExposureLogger, open_exposure_sink
from components.experiments.readout import Readout, read_out, unit_table
from components.experiments.report import interval_figure
from components.experiments.schema import CONTROL, DETERMINISTIC, EXPOSURE_COLUMNS, TREATMENT
from components.registry.experiment_registration import (
    download_experiment,
    end_experiment,
    experiment_model_name,
    live_experiment,
    register_experiment,
)
from components.registry.online_promotion import OnlineVerdict, decide_online
from components.registry.promotion import ONLINE_TAG_PREFIX, apply_decision
from components.registry.registration import CHALLENGER, CHAMPION, current_alias_version
from components.registry.tracking import close_run, configure_mlflow
from components.serving.experiment import ExperimentRecommender, ExperimentSpec
from components.serving.list_cache import CachedLists
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
                ONLINE_TAG_PREFIX,
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


# --- The loop against the simulated market -------------------------------------------


@dataclass
class SimulatedArms:
    """The experiment model's recommender as the simulation calls it: each arm's known
    users' lists computed once (`CachedLists`), so the market's sessions cost lookups."""

    experiment: ExperimentRecommender
    depth: int

    @classmethod
    def load(cls, folder: Path, logger_: ExposureLogger, k: int) -> SimulatedArms:
        experiment = ExperimentRecommender.load(folder, logger_)
        depth = 3 * k
        experiment.arms = {
            arm: CachedLists(recommender, depth) for arm, recommender in experiment.arms.items()
        }
        return cls(experiment, depth)

    def prefetch(self, user_ids: list[str]) -> None:
        for arm in self.experiment.arms.values():
            assert isinstance(arm, CachedLists)
            arm.prefetch(user_ids)

    def policy(
        self, user_ids: list[str], k: int, at: pd.Timestamp, sold: frozenset[str]
    ) -> list[list[str]]:
        answer = self.experiment.recommend(user_ids, k=k, exclude_item_ids=sold, served_at=at)
        return _lists(answer, len(user_ids))


def _lists(answer: pd.DataFrame, n_rows: int) -> list[list[str]]:
    grouped = answer.groupby("request", sort=True)["item_id"].agg(list)
    return [list(grouped.get(row, [])) for row in range(n_rows)]


@dataclass
class SingleArm:
    """One arm serving 100% of the market (the global-effect runs), recording what it
    served as exposure rows (no log: these runs are the simulation's ground truth)."""

    arm: CachedLists
    variant: str
    rows: list[pd.DataFrame] = field(default_factory=list)

    def policy(
        self, user_ids: list[str], k: int, at: pd.Timestamp, sold: frozenset[str]
    ) -> list[list[str]]:
        answer = self.arm.recommend(user_ids, k=k, exclude_item_ids=sold)
        requests = answer["request"].to_numpy(np.int64)
        self.rows.append(
            pd.DataFrame(
                {
                    "request_id": [f"{at.value}-{r}" for r in requests],
                    "served_at": pd.Series(at, index=answer.index).astype("datetime64[us, UTC]"),
                    "experiment_id": "global",
                    "unit_id": np.asarray(user_ids, dtype=object)[requests],
                    "unit_kind": "user",
                    "variant": self.variant,
                    "position": answer["rank"].astype(np.int32),
                    "item_id": answer["item_id"].astype(str),
                    "score": answer["score"],
                    "source": answer["source"],
                    "team": None,
                    "model_name": "global",
                    "model_version": self.variant,
                    "policy": DETERMINISTIC,
                    "propensity": 1.0,
                    "prefix_propensity": 1.0,
                    "inclusion_propensity": 1.0,
                    "candidate_rank": answer["rank"].astype(np.int32),
                }
            )[list(EXPOSURE_COLUMNS)]
        )
        return _lists(answer, len(user_ids))

    def exposures(self) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True)


def per_unit_metric(
    exposures: pd.DataFrame,
    result: SimulationResult,
    history: pd.DataFrame,
    config: ExperimentConfig,
) -> pd.Series:
    """The primary metric per served unit of a simulated run (attributed outcomes)."""
    from components.experiments.attribution import attribute_outcomes

    windows = {event: pd.Timedelta(gap) for event, gap in config.attribution_windows.items()}
    attributed = attribute_outcomes(exposures, result.interactions, windows)
    units = unit_table(exposures, attributed, history, result.items, result.start, config)
    return units[config.primary_metric]


def simulate_experiment(
    config: PipelineConfig,
    control_version: int | None = None,
    treatment_version: int | None = None,
    global_effect: bool = True,
    apply: bool = True,
) -> dict[str, Any]:
    """Start an experiment, let the simulated market use it for `simulation.days` days,
    read it out after each day until the verdict is final, and apply the verdict. With
    `global_effect`, the market is run again with each arm serving everyone (common random
    numbers) for the ground truth the readout's A/B estimate is compared with."""
    source = config.source
    if not isinstance(source, SyntheticSourceConfig):
        raise ValueError(
            f"experiment simulate needs the synthetic market (source.kind: synthetic), not "
            f"{source.kind!r}: the simulated users are the generator's; for a real market "
            "start an experiment and read it out from your own logs"
        )
    simulation = MarketSimulation.from_source(source, config.experiment.simulation)
    started = start_experiment(
        config, control_version, treatment_version, started_at=simulation.start
    )
    spec = started.spec
    logger.info(
        "simulating %d days of the market against %s", simulation.config.days, started.model_uri
    )
    sink = open_exposure_sink(spec.exposure_log)
    exposure_logger = ExposureLogger(sink)
    with tempfile.TemporaryDirectory(prefix="rewear-simulate-") as scratch:
        folder = download_experiment(config.registry.model_name, started.version, Path(scratch))
        arms = SimulatedArms.load(folder, exposure_logger, simulation.config.k)
        users = [str(user) for user in simulation.marketplace.tastes.user_ids]
        arms.prefetch(users)
        result = simulation.run(arms.policy)
        exposure_logger.close()
        truth = None
        if global_effect:
            truth = _global_effect(simulation, arms, config.experiment)
    exposures = sink.read(experiment_id=spec.experiment_id)
    interactions = pd.concat([simulation.history, result.interactions], ignore_index=True)
    readouts = []
    final: ReadoutResult | None = None
    for day in range(1, simulation.config.days + 1):
        as_of = result.start + pd.Timedelta(days=day)
        outcome = read_out_experiment(
            config,
            started,
            exposures,
            interactions,
            result.items,
            as_of,
            None if truth is None else truth["primary"],
            apply=apply,
        )
        readouts.append(outcome)
        logger.info(
            "day %d: %s %+.2f%% [%+.2f%%, %+.2f%%], verdict %s",
            day,
            config.experiment.primary_metric,
            100 * outcome.readout.primary.relative,
            100 * outcome.readout.relative_low,
            100 * outcome.readout.relative_high,
            outcome.verdict.verdict,
        )
        if outcome.verdict.verdict != "continue":
            final = outcome
            break
    last = final or readouts[-1]
    if final is None and apply:
        # The simulated period is over before a verdict: the experiment ends without one.
        client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
        end_experiment(client, spec.model_name, started.version, "inconclusive")
        close_run(client, started.run_id, failed=False)
    return {
        "experiment_id": spec.experiment_id,
        "experiment_model": started.model_uri,
        "control_version": spec.control_version,
        "treatment_version": spec.treatment_version,
        "design": spec.design,
        "days_simulated": simulation.config.days,
        "decided_on_day": None if final is None else len(readouts),
        "verdict": last.summary()["verdict"],
        "reasons": last.verdict.reasons,
        "applied": last.applied,
        "readout": last.readout.to_dict(),
        "global_effect": truth,
        "sessions": len(result.sessions),
        "sold_listings_served": result.sold_listings_served,
        "champion_version": _current_champion(config),
        "serve_command": started.serve_command,
    }


def _global_effect(
    simulation: MarketSimulation, arms: SimulatedArms, config: ExperimentConfig
) -> dict[str, float]:
    """100% control against 100% treatment, same random numbers: the primary metric per
    served unit in each world, and total listings sold."""
    figures: dict[str, float] = {}
    for variant in (CONTROL, TREATMENT):
        arm = arms.experiment.arms[variant]
        assert isinstance(arm, CachedLists)
        single = SingleArm(arm, variant)
        result = simulation.run(single.policy)
        metric = per_unit_metric(single.exposures(), result, simulation.history, config)
        figures[variant] = float(metric.mean())
        figures[f"{variant}_sold"] = float((result.interactions["event"] == "purchase").sum())
    figures["primary"] = figures[TREATMENT] - figures[CONTROL]
    figures["relative"] = (
        figures["primary"] / figures[CONTROL] if figures[CONTROL] else float("nan")
    )
    return figures


def _current_champion(config: PipelineConfig) -> int | None:
    client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
    return current_alias_version(client, config.registry.model_name, CHAMPION)


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
