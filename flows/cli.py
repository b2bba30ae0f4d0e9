"""The `rewear` command line: retrain, generate data, ask the champion for recommendations.

`app` registers the commands; what they share (environment, `--set` parsing, running a
flow, printing) lives in the `flows.cli_*` modules, and `evaluate` and `experiment` in
modules of their own."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_evaluate import evaluate
from flows.cli_experiment import experiment_app
from flows.cli_flow_runner import run_flow
from flows.cli_output import print_report, recommendation_table, refresh_summary
from flows.cli_setup import (
    DEFAULT_CONFIG,
    ConfigOption,
    OverridesOption,
    checked_overrides,
    console,
    errors,
    parse_overrides,
    prepare_environment,
    use_tracking_store_or_exit,
)

app = typer.Typer(help="rewear: retrain and serve a two-stage marketplace recommender.")
data_app = typer.Typer(help="Data utilities.")
app.add_typer(data_app, name="data")
app.add_typer(experiment_app, name="experiment")


@app.command()
def retrain(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML")] = Path(
        "configs/synthetic.yaml"
    ),
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: --set source.n_users=500"),
    ] = None,
    force_promote: Annotated[
        bool,
        typer.Option(
            "--force-promote",
            help="Make the new version champion even if the promotion gate says no "
            "(recorded as `forced` on the version and in the report; a version that does "
            "not load is never promoted)",
        ),
    ] = False,
) -> None:
    """Run the retrain flow and print a summary of the run report."""
    prepare_environment()
    parsed = checked_overrides(config, overrides)

    from flows.retrain import retrain as retrain_flow

    print_report(run_flow(retrain_flow, config, parsed, force_promote))


app.command()(evaluate)


@data_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder for the parquet tables")],
    seed: Annotated[int, typer.Option(help="Random seed")] = 7,
    n_users: Annotated[int | None, typer.Option(help="Number of users")] = None,
    n_days: Annotated[int | None, typer.Option(help="Simulated days")] = None,
) -> None:
    """Write the synthetic marketplace as canonical parquet tables (interactions, items, users)."""
    from components.config import SyntheticSourceConfig
    from components.data.snapshot import write_tables
    from components.data.synthetic import generate_marketplace

    values: dict[str, Any] = {"seed": seed}
    if n_users is not None:
        values["n_users"] = n_users
    if n_days is not None:
        values["n_days"] = n_days
    marketplace = generate_marketplace(SyntheticSourceConfig(**values))
    out.mkdir(parents=True, exist_ok=True)
    described = write_tables(marketplace.tables, out)
    for name, info in described.items():
        console.print(f"{name}: {info['rows']} rows -> {out / (name + '.parquet')}")


@app.command()
def recommend(
    user_id: Annotated[
        str | None, typer.Option("--user-id", help="User to recommend for (omit: anonymous)")
    ] = None,
    recent_items: Annotated[
        list[str] | None,
        typer.Option(
            "--recent-item", help="An item the (anonymous) user just viewed; repeat for more"
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="An item never to return; repeatable")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="How many items")] = 10,
    model: Annotated[str, typer.Option(help="Registered model name")] = "rewear",
    alias: Annotated[str, typer.Option(help="Registry alias to load")] = "champion",
) -> None:
    """Ask `models:/<model>@<alias>` for a user's (or a session's) top-k and print them."""
    settings = prepare_environment()
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from components.registry.registration import model_uri

    if user_id is None and not recent_items:
        errors.print(
            "[red]error:[/red] give --user-id, or --recent-item (repeatable) for an anonymous user"
        )
        raise typer.Exit(2)
    use_tracking_store_or_exit(settings)
    uri = model_uri(model, alias=alias)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        errors.print(
            f"[red]error:[/red] cannot load {uri} from {settings.tracking_uri}: {error}. "
            "Run `rewear retrain` first, or check REWEAR_HOME."
        )
        raise typer.Exit(1) from error
    request: dict[str, Any] = {}
    if user_id is not None:
        request["user_id"] = [user_id]
    if recent_items:
        request["recent_item_ids"] = [list(recent_items)]
    try:
        answer = loaded.predict(
            pd.DataFrame(request), params={"k": k, "exclude_item_ids": list(exclude or [])}
        )
    except Exception as error:
        message = getattr(error, "message", None) or str(error)
        errors.print(f"[red]error:[/red] {message}")
        raise typer.Exit(2) from error
    who = f"user {user_id}" if user_id is not None else "an anonymous session"
    console.print(recommendation_table(answer, f"{uri} — top {k} for {who}"))


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Model URI to serve")] = "models:/rewear@champion",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 5001,
    host: Annotated[
        str, typer.Option(help="Address to bind (0.0.0.0: every interface)")
    ] = "127.0.0.1",
    workers: Annotated[
        int | None, typer.Option(min=1, help="Server worker processes (default: one per CPU)")
    ] = None,
) -> None:
    """Serve a registered version with MLflow's model server (`mlflow models serve`) from
    REWEAR_HOME's registry, with this environment's tools on PATH (no activated venv
    needed). Runs until stopped."""
    from components.serving.server import serve_command, server_environment

    settings = prepare_environment()
    use_tracking_store_or_exit(settings)
    workers = workers or os.cpu_count() or 1
    command = serve_command(model, port, workers, host)
    console.print(f"serving {model} on http://{host}:{port}/invocations ({workers} workers)")
    environment = server_environment(settings.tracking_uri, settings.serving_threads)
    os.execve(command[0], command, environment)


@app.command("relocate-home")
def relocate_home_command() -> None:
    """Re-root the artifact locations of a copied or restored REWEAR_HOME's registry onto
    this home (MLflow records them as absolute paths: a copy would read the original's)."""
    from components.registry.tracking import relocate_home

    settings = prepare_environment()
    if not settings.mlflow_db.exists() or settings.mlflow_tracking_uri is not None:
        errors.print(
            f"[red]error:[/red] no local registry at {settings.mlflow_db} to relocate "
            "(a tracking server's store is the server's)"
        )
        raise typer.Exit(1)
    changed = relocate_home(settings)
    if not any(changed.values()):
        console.print(f"nothing to relocate: {settings.mlflow_db} already records this home")
        return
    counts = ", ".join(f"{key} {count}" for key, count in changed.items() if count)
    console.print(f"re-rooted onto {settings.mlflow_artifacts}: {counts}", markup=False)


@app.command("refresh-index")
def refresh_index_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
) -> None:
    """Rebuild the champion's index from the newest data and publish it (no retraining)."""
    prepare_environment()
    parsed = checked_overrides(config, overrides)
    from flows.refresh_index import refresh_index

    result = run_flow(refresh_index, config, parsed)
    console.print(refresh_summary(result), markup=False)


@app.command()
def monitor(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
    thresholds: Annotated[
        list[str] | None,
        typer.Option("--threshold", help="A monitoring threshold: --threshold max_psi=0.1"),
    ] = None,
) -> None:
    """Drift, champion quality and candidate recall on the newest data; exit 1 on an alert
    (too little data is reported as such, exit 0)."""
    prepare_environment()
    parsed = checked_overrides(config, overrides)
    from flows.monitor import monitor as monitor_flow

    result = run_flow(monitor_flow, config, parsed, parse_overrides(thresholds or []))
    console.print(
        f"{result['status']}: {result['summary']}. PSI {result['drift']['psi']}, "
        f"champion v{result['champion_version']} "
        f"{result['quality']['metrics']}, candidate recall {result['quality']['candidate_recall']}",
        markup=False,
    )


def main() -> None:  # pragma: no cover - console script entry
    app(sys.argv[1:])
