"""`rewear experiment`: start, read out, simulate and stop the online experiment of
champion against challenger."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_flow_runner import run_flow
from flows.cli_output import print_experiment
from flows.cli_setup import (
    DEFAULT_CONFIG,
    ConfigOption,
    OverridesOption,
    checked_overrides,
    console,
    prepare_environment,
)

experiment_app = typer.Typer(
    help="Online experiments: champion against challenger on live (or simulated) traffic."
)

VersionOption = Annotated[
    int | None, typer.Option(help="Registered version (default: the alias's version)")
]


@experiment_app.command("start")
def experiment_start_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
    control: VersionOption = None,
    treatment: VersionOption = None,
) -> None:
    """Pin champion (control) and challenger (treatment), register the experiment model
    and print how to serve it."""
    prepare_environment()
    parsed = checked_overrides(config, overrides)
    from flows.experiment import experiment_start

    result = run_flow(experiment_start, config, parsed, control, treatment)
    console.print(
        f"experiment {result['experiment_id']}: v{result['control_version']} (control) vs "
        f"v{result['treatment_version']} (treatment), {result['design']}; serve it with\n"
        f"  {result['serve_command']}",
        markup=False,
    )


@experiment_app.command("readout")
def experiment_readout_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
    as_of: Annotated[str | None, typer.Option(help="Read out as of this UTC time")] = None,
) -> None:
    """Read the live experiment out; a final verdict moves `champion` or holds it."""
    prepare_environment()
    parsed = checked_overrides(config, overrides)
    from flows.experiment import experiment_readout

    summary = run_flow(experiment_readout, config, parsed, as_of)
    if summary["verdict"] == "no_live_experiment":
        console.print("no experiment is live: start one with `rewear experiment start`")
        return
    if summary["verdict"] == "logging":
        console.print(
            f"explore experiment {summary['experiment_id']}: {summary['sessions']} sessions of "
            f"{summary['units']} units logged; estimate a version with `rewear evaluate "
            "--off-policy --model models:/<name>/<version>`",
            markup=False,
        )
        return
    print_experiment(summary)


@experiment_app.command("simulate")
def experiment_simulate_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
    control: VersionOption = None,
    treatment: VersionOption = None,
) -> None:
    """Run champion against challenger on the simulated market, read out daily, decide."""
    prepare_environment()
    parsed = checked_overrides(config, overrides)
    from flows.experiment import experiment_simulate

    print_experiment(run_flow(experiment_simulate, config, parsed, control, treatment))


@experiment_app.command("stop")
def experiment_stop_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
) -> None:
    """End the live experiment without a verdict (champion stays where it is)."""
    prepare_environment()
    parsed = checked_overrides(config, overrides)
    from components.config import load_config
    from components.pipeline.experiments import stop_live_experiment

    stopped = stop_live_experiment(load_config(config, parsed))
    if stopped is None:
        console.print("no experiment is live", markup=False)
    else:
        console.print(f"experiment {stopped} stopped; champion unchanged", markup=False)
