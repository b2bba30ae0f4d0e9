"""The online experiment against the simulated market: the experiment model serves the
generator's users for `simulation.days` days through its exposure log, a readout a day
decides, and single-arm runs of the same market give the ground truth the A/B estimate is
compared with. Wiring only: the users are `components.data.market_simulation`, the start
and the readouts `components.pipeline.experiments`.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import ExperimentConfig, PipelineConfig, SyntheticSourceConfig
from components.data.market_simulation import MarketSimulation, SimulationResult
from components.experiments.exposure_log import ExposureLogger, open_exposure_sink
from components.experiments.schema import CONTROL, DETERMINISTIC, EXPOSURE_COLUMNS, TREATMENT
from components.experiments.unit_table import unit_table
from components.pipeline.experiments import (
    ReadoutResult,
    StartedExperiment,
    read_out_experiment,
    start_experiment,
)
from components.registry.experiment_registration import download_experiment, end_experiment
from components.registry.registration import CHAMPION, current_alias_version
from components.registry.tracking import close_run, configure_mlflow
from components.serving.experiment import ExperimentRecommender
from components.serving.list_cache import CachedLists
from components.settings import RewearSettings

logger = logging.getLogger(__name__)


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
    source = _synthetic_source(config)
    simulation = MarketSimulation.from_source(source, config.experiment.simulation)
    started = start_experiment(
        config, control_version, treatment_version, started_at=simulation.start
    )
    spec = started.spec
    logger.info(
        "simulating %d days of the market against %s", simulation.config.days, started.model_uri
    )
    result, exposures, truth = _run_market(config, simulation, started, global_effect)
    interactions = pd.concat([simulation.history, result.interactions], ignore_index=True)
    readouts, final = _read_out_each_day(
        config, started, result, exposures, interactions, simulation.config.days, truth, apply
    )
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


def _synthetic_source(config: PipelineConfig) -> SyntheticSourceConfig:
    """The config's synthetic source: the simulated users are the generator's."""
    source = config.source
    if not isinstance(source, SyntheticSourceConfig):
        raise ValueError(
            f"experiment simulate needs the synthetic market (source.kind: synthetic), not "
            f"{source.kind!r}: the simulated users are the generator's; for a real market "
            "start an experiment and read it out from your own logs"
        )
    return source


def _run_market(
    config: PipelineConfig,
    simulation: MarketSimulation,
    started: StartedExperiment,
    global_effect: bool,
) -> tuple[SimulationResult, pd.DataFrame, dict[str, float] | None]:
    """The simulated days served by the experiment model through its exposure log; what
    the market did, the experiment's logged exposures and (with `global_effect`) the
    single-arm ground truth."""
    spec = started.spec
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
    return result, exposures, truth


def _read_out_each_day(
    config: PipelineConfig,
    started: StartedExperiment,
    result: SimulationResult,
    exposures: pd.DataFrame,
    interactions: pd.DataFrame,
    days: int,
    truth: dict[str, float] | None,
    apply: bool,
) -> tuple[list[ReadoutResult], ReadoutResult | None]:
    """A readout at the end of each simulated day until one is final: every readout, and
    the final one (None when the period ended first)."""
    readouts = []
    for day in range(1, days + 1):
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
            return readouts, outcome
    return readouts, None


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
