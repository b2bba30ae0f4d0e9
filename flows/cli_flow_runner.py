"""How a `rewear` command runs a flow: inside a local Prefect server, a failure as one line
(exit 1) and SIGTERM as a clean stop (exit 143) through the flow's own failure handling."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from flows.cli_setup import errors


def run_flow(flow_fn: Any, config: Path, *args: Any) -> dict[str, Any]:
    """Run the flow; exit 1 with the error in one line on failure (the traceback goes to the
    log file under REWEAR_HOME and to the Prefect UI)."""
    from components.settings import RewearSettings
    from flows.console_logging import quiet_failures_on_console
    from flows.prefect_server import local_prefect_server

    log_file = quiet_failures_on_console(RewearSettings().root / "logs")
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with local_prefect_server():
            return flow_fn(str(config), *args)
    except Terminated as error:
        errors.print(
            f"[red]{flow_fn.name} stopped:[/red] {error}; its MLflow run is marked failed and "
            "champion is unchanged",
            highlight=False,
        )
        raise typer.Exit(128 + signal.SIGTERM) from None
    except Exception as error:
        errors.print(
            f"[red]{flow_fn.name} failed:[/red] {escape(f'{type(error).__name__}: {error}')} "
            f"(traceback: {log_file})",
            highlight=False,
        )
        raise typer.Exit(1) from error
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM (a Prefect worker cancelling the run, `timeout`, a service manager): the run
    stops where it is, through the flows' own failure handling (MLflow run marked failed,
    no alias moved). A BaseException, so that no task retries it."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # A second SIGTERM during the clean-up is not turned into another exception there.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(f"stopped by {signal.Signals(signum).name}")
