"""What every `rewear` command does first: prepare the environment from REWEAR_* settings,
parse and check `--set` values, open the home's registry; and the two consoles it prints on.
A problem here is one line and an exit code, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

console = Console()
errors = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML")]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set source.n_users=500"),
]
DEFAULT_CONFIG = Path("configs/synthetic.yaml")


def prepare_environment() -> Any:
    """Keep Prefect's state under REWEAR_HOME unless the user set PREFECT_HOME/API_URL."""
    from pydantic import ValidationError

    from components.settings import RewearSettings
    from components.store import StorageError

    try:
        settings = RewearSettings().ensure()
    except StorageError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from error
    except ValidationError as error:
        problems = "; ".join(_setting_problem(problem) for problem in error.errors())
        errors.print(f"[red]error:[/red] {escape(problems)}", highlight=False)
        raise typer.Exit(2) from error
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    # The temporary local server may need more than Prefect's default 20 s to start on a
    # busy 2-core machine; a slow start must not fail a scheduled retrain.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # The local server's anonymous telemetry heartbeat races its own start-up writes to
    # SQLite and printed "database is locked" tracebacks on successful runs.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The components' own progress (encoder epochs, index builds) in the console and the
    # flow run's logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components")
    # MLflow's per-file download bars would bury the progress lines of the flows.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return settings


def _setting_problem(problem: Any) -> str:
    """One invalid REWEAR_* environment variable, named, as one phrase."""
    if problem["type"] == "value_error":
        return str(problem["msg"]).removeprefix("Value error, ")
    name = "REWEAR_" + "_".join(str(part) for part in problem["loc"]).upper()
    return f"{name}: {problem['msg']} (got {problem.get('input')!r})"


def parse_overrides(values: list[str]) -> dict[str, Any]:
    """`key=value` pairs (`--set`, `--threshold`), each value read as YAML."""
    overrides: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"--set expects key=value (e.g. source.n_users=500), got {value!r}"
            )
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            errors.print(
                f"[red]error:[/red] --set {escape(value)}: the value is not valid YAML "
                f"({escape(problem)}); quote it to pass it as text, e.g. --set "
                f"\"{escape(key.strip())}='{escape(raw)}'\"",
                highlight=False,
            )
            raise typer.Exit(2) from None
    return overrides


def checked_overrides(config: Path, overrides: list[str] | None) -> dict[str, Any]:
    """Parse --set values and validate the config before any flow is imported (exit 2)."""
    from components.config import ConfigError, load_config

    parsed = parse_overrides(overrides or [])
    try:
        load_config(config, parsed)
    except ConfigError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from error
    return parsed


def use_tracking_store_or_exit(settings: Any) -> None:
    """The home's registry for a command that reads it, refused (exit 1, nothing created)
    when its database was lost or emptied beside the artifacts it described."""
    from components.registry.tracking import TrackingStoreError, use_tracking_store

    try:
        use_tracking_store(settings)
    except TrackingStoreError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from error
