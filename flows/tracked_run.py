"""A flow run's MLflow run and per-run folder: opened at the flow's start (after marking
FAILED the runs killed processes left open), closed only after its report is logged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.logging import get_logger

from components.config import PipelineConfig, load_config
from components.registry.tracking import (
    close_run,
    configure_mlflow,
    fail_abandoned_runs,
    owned_run_tags,
)
from components.settings import RewearSettings
from components.store import write_json
from flows.progress import show_component_progress

_logger = get_logger("rewear.orchestration")


@dataclass(frozen=True)
class TrackedRun:
    """A flow run's MLflow run and per-run folder (`REWEAR_HOME/runs/<mlflow run id>`)."""

    settings: RewearSettings
    config: PipelineConfig
    client: Any
    run_id: str
    run_dir: Path


def start_tracked_run(kind: str, config_path: str, overrides: dict[str, Any] | None) -> TrackedRun:
    """Load the config, open an MLflow run tagged with the flow `kind`, make its folder."""
    show_component_progress()
    settings = RewearSettings().ensure()
    config = load_config(config_path, overrides)
    client, experiment_id = open_tracking(settings, config.registry.experiment)
    run = client.create_run(
        experiment_id,
        run_name=f"{kind}-{config.name}",
        tags={"rewear.dataset": config.name, "rewear.kind": kind, **owned_run_tags()},
    )
    run_dir = settings.runs / run.info.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return TrackedRun(settings, config, client, run.info.run_id, run_dir)


def open_tracking(settings: RewearSettings, experiment: str) -> tuple[Any, str]:
    """The MLflow client and experiment of a new flow run, after marking FAILED the runs
    that killed processes left open (see `fail_abandoned_runs`)."""
    client, experiment_id = configure_mlflow(settings, experiment)
    for run_id in fail_abandoned_runs(client):
        _logger.warning("MLflow run %s was left open by a killed process: FAILED", run_id)
    return client, experiment_id


def finish_tracked_run(run: TrackedRun, report: dict[str, Any], failed: bool) -> None:
    """Write `report.json` in the run folder, log it, and only then close the MLflow run."""
    write_json(run.run_dir / "report.json", report)
    run.client.log_artifact(run.run_id, str(run.run_dir / "report.json"))
    close_run(run.client, run.run_id, failed)
