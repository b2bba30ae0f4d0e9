"""The `rewear` command line: retrain, generate data, ask the champion for recommendations."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="rewear: retrain and serve a two-stage marketplace recommender.")
data_app = typer.Typer(help="Data utilities.")
app.add_typer(data_app, name="data")
console = Console()
errors = Console(stderr=True, soft_wrap=True)


def _prepare_environment() -> Any:
    """Keep Prefect's state under REWEAR_HOME unless the user set PREFECT_HOME/API_URL."""
    from components.settings import RewearSettings

    settings = RewearSettings().ensure()
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    return settings


def _parse_overrides(values: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"--set expects key=value (e.g. source.n_users=500), got {value!r}"
            )
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides


@app.command()
def retrain(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML")] = Path(
        "configs/synthetic.yaml"
    ),
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: --set source.n_users=500"),
    ] = None,
) -> None:
    """Run the retrain flow and print a summary of the run report."""
    _prepare_environment()
    from components.config import ConfigError, load_config

    parsed = _parse_overrides(overrides or [])
    try:
        load_config(config, parsed)
    except ConfigError as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error

    from flows.retrain import retrain as retrain_flow

    try:
        result = retrain_flow(config_path=str(config), overrides=parsed)
    except Exception as error:
        errors.print(f"[red]retrain failed:[/red] {type(error).__name__}: {error}")
        raise typer.Exit(1) from error
    print_report(result)


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"rewear retrain — {report['dataset']} ({report['protocol']})")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("popularity baseline", justify="right")
    baseline = report["baselines"].get("popularity", {})
    for key in sorted(report["metrics"], key=_metric_order):
        if key.split("@")[0] in ("recall", "ndcg"):
            table.add_row(key, f"{report['metrics'][key]:.4f}", f"{baseline.get(key, 0):.4f}")
    console.print(table)
    model = report.get("model") or {}
    console.print(
        f"snapshot {report['snapshot_id']} · {report['evaluated_users']} users evaluated · "
        f"registered {model.get('name')} v{model.get('version')} aliases {model.get('aliases')}"
        f" · promoted: {report['promoted']}"
    )
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings_s"].items())
    console.print(f"timings: {timings}")
    console.print(f"report: {report['report_path']}")


def _metric_order(key: str) -> tuple[int, str]:
    name, _, k = key.partition("@")
    return (int(k or 0), name)


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
    user_id: Annotated[str, typer.Option("--user-id", help="User to recommend for")],
    k: Annotated[int, typer.Option("--k", help="How many items")] = 10,
    model: Annotated[str, typer.Option(help="Registered model name")] = "rewear",
    alias: Annotated[str, typer.Option(help="Registry alias to load")] = "champion",
) -> None:
    """Ask `models:/<model>@<alias>` for a user's top-k and print them."""
    settings = _prepare_environment()
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from components.registry.registration import model_uri

    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    uri = model_uri(model, alias=alias)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        errors.print(
            f"[red]error:[/red] cannot load {uri} from {settings.tracking_uri}: {error}. "
            "Run `rewear retrain` first, or check REWEAR_HOME."
        )
        raise typer.Exit(1) from error
    try:
        answer = loaded.predict(pd.DataFrame({"user_id": [user_id]}), params={"k": k})
    except Exception as error:
        errors.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    table = Table(title=f"{uri} — top {k} for user {user_id}")
    for column in ("rank", "item_id", "title", "category", "price", "score", "source"):
        table.add_column(
            column, justify="right" if column in ("rank", "price", "score") else "left"
        )
    for row in answer.itertuples():
        table.add_row(
            str(row.rank),
            str(row.item_id),
            str(row.title),
            str(row.category),
            "" if pd.isna(row.price) else f"{row.price:.2f}",
            f"{row.score:.4f}",
            str(row.source),
        )
    console.print(table)


def main() -> None:  # pragma: no cover - console script entry
    app(sys.argv[1:])
