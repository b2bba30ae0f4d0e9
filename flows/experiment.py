"""The online experiment flows: `experiment-start`, `experiment-readout` (the daily
deployment while an experiment is live) and `experiment-simulate` (the whole loop against
the simulated market: the demo, CI and bench/online.py). The work is in
`components.pipeline.experiments` and `components.pipeline.experiment_simulation`; these
wrap it for Prefect (logs, artifacts)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.config import load_config
from components.experiments.report import readout_markdown
from components.pipeline import experiment_simulation, experiments
from flows.progress import show_component_progress


@flow(name="experiment-start", log_prints=True)
def experiment_start(
    config_path: str = "configs/synthetic.yaml",
    overrides: dict[str, Any] | None = None,
    control_version: int | None = None,
    treatment_version: int | None = None,
) -> dict[str, Any]:
    """Pin champion (control) and challenger (treatment), register the experiment model
    (`<model>-experiment@live`) and say how to serve it."""
    show_component_progress()
    config = load_config(config_path, overrides)
    started = experiments.start_experiment(config, control_version, treatment_version)
    print(f"experiment {started.spec.experiment_id}: serve it with {started.serve_command}")
    return {
        "experiment_id": started.spec.experiment_id,
        "experiment_model": started.model_uri,
        "control_version": started.spec.control_version,
        "treatment_version": started.spec.treatment_version,
        "design": started.spec.design,
        "serve_command": started.serve_command,
    }


@flow(name="experiment-readout", log_prints=True)
def experiment_readout(
    config_path: str = "configs/synthetic.yaml",
    overrides: dict[str, Any] | None = None,
    as_of: str | None = None,
) -> dict[str, Any]:
    """Read the live experiment out from its exposure log and the source's interactions;
    a final verdict moves `champion` (or not) and ends the experiment."""
    show_component_progress()
    config = load_config(config_path, overrides)
    moment = None if as_of is None else pd.Timestamp(as_of)
    summary = experiments.read_out_live(config, moment)
    if summary is None:
        print(f"no experiment of {config.registry.model_name} is live: nothing to read out")
        return {"verdict": "no_live_experiment"}
    if summary["verdict"] == "logging":
        print(
            f"explore experiment {summary['experiment_id']}: {summary['sessions']} sessions of "
            f"{summary['units']} units logged with exploration; estimate a version from them "
            "with `rewear evaluate --off-policy --model models:/<name>/<version>`"
        )
        return summary
    publish_readout(summary)
    return summary


@flow(name="experiment-simulate", log_prints=True)
def experiment_simulate(
    config_path: str = "configs/synthetic.yaml",
    overrides: dict[str, Any] | None = None,
    control_version: int | None = None,
    treatment_version: int | None = None,
) -> dict[str, Any]:
    """Start an experiment of challenger against champion, let the simulated market use it
    day by day with a readout each day, and apply the verdict."""
    show_component_progress()
    config = load_config(config_path, overrides)
    summary = experiment_simulation.simulate_experiment(config, control_version, treatment_version)
    publish_readout(summary)
    return summary


def publish_readout(summary: dict[str, Any]) -> None:
    create_markdown_artifact(
        key=f"rewear-experiment-{summary['experiment_id']}".lower().replace("_", "-"),
        markdown=readout_markdown(summary),
        description=f"online experiment {summary['experiment_id']}: {summary['verdict']}",
    )
