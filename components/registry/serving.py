"""Run MLflow's own model server on a registered version: `mlflow models serve -m URI
--env-manager local` on a loopback port, for the serving tests and `bench/serving.py`.

Production serves the same way (see README, "Serving"); this helper only adds a free port,
a readiness wait on `/ping`, and a clean stop of the server's process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

START_TIMEOUT_S = 240.0


class ServerError(RuntimeError):
    """The model server did not come up; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_command(model_uri: str, port: int, workers: int = 1) -> list[str]:
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    return [
        str(mlflow_cli),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


@contextmanager
def model_server(
    model_uri: str,
    tracking_uri: str,
    log_path: Path,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[str]:
    """Serve `model_uri` until the block ends; yields the base URL (`http://127.0.0.1:PORT`).

    MLflow starts `uvicorn` by name, so this interpreter's bin folder goes first on PATH
    (as in an activated virtual environment)."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with Path(log_path).open("w") as log:
        server = subprocess.Popen(
            serve_command(model_uri, port),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until_ready(server, base, start_timeout_s, Path(log_path))
            yield base
        finally:
            _stop(server)


def _wait_until_ready(
    server: subprocess.Popen, base: str, timeout_s: float, log_path: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise ServerError(f"`{' '.join(server.args)}` did not start:\n{tail}")  # type: ignore[arg-type]
        time.sleep(0.5)


def _stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow -> uvicorn -> worker)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
