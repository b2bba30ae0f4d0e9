"""The Prefect API a flow runs against: the configured one, or a temporary local server
started by this process and dying with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import prefect
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

from components.child_processes import free_local_port, start_process_dying_with_parent
from components.store import exclusive_lock


@contextmanager
def local_prefect_server() -> Iterator[None]:
    """Run the block against Prefect's API: the configured one (PREFECT_API_URL), or else a
    temporary local server that this process starts and that dies with it, even on SIGKILL
    (Prefect's own temporary server is left running, reparented, when its parent is
    killed). The server's database is Prefect's (PREFECT_HOME, under REWEAR_HOME)."""
    if PREFECT_API_URL.value():
        yield
        return
    port = free_local_port()
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(prefect.__file__).parents[1])]
    command += ["--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "error", "--lifespan", "on"]
    # Its own session: a SIGTERM or Ctrl-C sent to the run's process group must not take
    # the server away while the run records its failure through it.
    url = f"http://127.0.0.1:{port}/api"
    # One server at a time migrates the home's Prefect database: two runs started at once
    # on a new home both created its tables, and the second crashed ("index ... already
    # exists"). The lock is held until this server answers (its migration is done).
    with exclusive_lock(Path(get_current_settings().home) / "server-start.lock"):
        server = start_process_dying_with_parent(command, env, start_new_session=True)
        try:
            _wait_until_healthy(server, url)
        except BaseException:
            server.kill()
            server.wait()
            raise
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        _drain_api_workers()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _drain_api_workers() -> None:
    """Send the logs and events still queued for the API while the server is up: sent
    after it stopped, each batch fails with '--- Error logging to API ---' on stderr."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)


def _wait_until_healthy(server: subprocess.Popen[bytes], url: str) -> None:
    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    deadline = time.monotonic() + timeout
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(
                    f"the local Prefect server exited with code {server.returncode} while "
                    "starting: see its output above"
                )
            try:
                if client.get(f"{url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError(
        f"the local Prefect server did not answer within {timeout} s: raise "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or point PREFECT_API_URL at a "
        "running server (`prefect server start`)"
    )
