"""Run MLflow's own model server on a registered version: `mlflow models serve -m URI
--env-manager local` on a loopback port, for the serving tests and `bench/serving.py`.

Production serves the same way (see README, "Serving"); this helper only adds a free port,
a readiness wait on `/ping`, and a clean stop of the server's process group.

The request guard: MLflow's scoring server answers a deeply nested body with a 500, echoes
the request (and, for unexpected errors, a stack trace with server paths) in its error
answers, and reads `inputs` / `instances` payloads into shapes the model then refuses with
a misleading message. `install_request_guard` wraps the server's `invocations` function
(looked up per request), from the model's own load, so plain `mlflow models serve` gets
it: a request must be JSON (415), at most `REWEAR_MAX_REQUEST_BYTES` (413), valid UTF-8
JSON of at most `MAX_JSON_DEPTH` nested levels holding `dataframe_records` or
`dataframe_split` (400 naming `dataframe_records`); error answers keep the message only.
A request the model can answer directly (`RewearPyfunc.answer_json`) is answered from the
payload the guard has parsed, without MLflow's DataFrame round trip.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 240.0
#: Nested JSON levels a request may have: {"dataframe_split": {"data": [[.., [ids]]]}} has 5.
MAX_JSON_DEPTH = 6
#: Longest error message returned (what MLflow adds beyond the model's message is dropped).
MAX_MESSAGE_CHARS = 500
ROW_KEYS = ("dataframe_records", "dataframe_split")
PARAMS = ("k", "exclude_item_ids")
REQUEST_EXAMPLE = (
    '{"dataframe_records": [{"user_id": "u1"}, {"recent_item_ids": ["i1", "i2"]}], '
    '"params": {"k": 20}}'
)
log = logging.getLogger(__name__)
#: The guard installed in this process ("guard"), so a second model load adds no second one.
_INSTALLED: dict[str, Callable[..., Any]] = {}


class RefusedRequestError(ValueError):
    """A request refused before MLflow reads it; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_request(
    body: bytes, content_type: str | None, max_bytes: int, params_read: tuple[str, ...] = PARAMS
) -> dict[str, Any]:
    """The decoded JSON request, or `RefusedRequestError` saying what is wrong and what to send."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime != "application/json":
        raise RefusedRequestError(
            f"send the request as Content-Type: application/json (got {content_type!r}), "
            f"e.g. {REQUEST_EXAMPLE}",
            415,
        )
    if len(body) > max_bytes:
        raise RefusedRequestError(
            f"the request body has {len(body):,} bytes; at most {max_bytes:,} "
            "(REWEAR_MAX_REQUEST_BYTES): send fewer rows per call",
            413,
        )
    try:
        payload = json.loads(body.decode("utf-8"))
    except RecursionError as error:
        raise RefusedRequestError(
            f"the request JSON nests too deep; send {REQUEST_EXAMPLE}"
        ) from error
    except json.JSONDecodeError as error:
        raise RefusedRequestError(
            f"the request body is not valid JSON ({error.msg} at line {error.lineno} column "
            f"{error.colno}); send {REQUEST_EXAMPLE}"
        ) from error
    except UnicodeDecodeError as error:
        raise RefusedRequestError(
            f"the request body is not UTF-8 JSON; send {REQUEST_EXAMPLE}"
        ) from error
    if not isinstance(payload, dict):
        raise RefusedRequestError(
            f"the request must be a JSON object, got a {type(payload).__name__}; "
            f"send {REQUEST_EXAMPLE}"
        )
    if json_depth(payload) > MAX_JSON_DEPTH:
        raise RefusedRequestError(
            f"the request JSON nests more than {MAX_JSON_DEPTH} levels deep: user_id is a "
            "string, recent_item_ids a list of strings; send " + REQUEST_EXAMPLE
        )
    rows = [key for key in ROW_KEYS if key in payload]
    unknown = sorted(set(payload) - {*ROW_KEYS, "params"})
    if unknown or len(rows) != 1:
        found = ", ".join(f"`{key}`" for key in sorted(payload)) or "no keys"
        raise RefusedRequestError(
            f"the request holds {found}: this model reads one row per user under "
            f"`dataframe_records` (`inputs` and `instances` are not read), and `k` and "
            f"`exclude_item_ids` under `params`; send {REQUEST_EXAMPLE}"
        )
    params = payload.get("params", {})
    if not isinstance(params, dict):
        raise RefusedRequestError(
            f'`params` must be an object, e.g. {{"k": 20}}; send {REQUEST_EXAMPLE}'
        )
    unknown = sorted(set(params) - set(params_read))
    if unknown:
        raise RefusedRequestError(
            f"unknown params {unknown}: this model reads {list(params_read)}; send "
            f"{REQUEST_EXAMPLE}"
        )
    records = payload.get("dataframe_records")
    if records is not None:
        if not isinstance(records, list) or not records:
            raise RefusedRequestError(
                f"`dataframe_records` must be a non-empty list of rows; send {REQUEST_EXAMPLE}"
            )
        bad = [row for row, record in enumerate(records) if not isinstance(record, dict)]
        if bad:
            raise RefusedRequestError(
                f'row {bad[0]} of `dataframe_records` is not an object like {{"user_id": "u1"}}; '
                f"send {REQUEST_EXAMPLE}"
            )
    return payload


def json_depth(value: Any) -> int:
    """Levels of nested objects and lists (a scalar is 0), without recursion; counting
    stops one level past MAX_JSON_DEPTH."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # deeper is refused anyway: stop counting there
            stack.extend((child, depth + 1) for child in children)
    return deepest


def error_message(message: str) -> str:
    """The model's own message from one MLflow wraps: without the echoed input
    ("Failed to predict data '...'. Error: ", "Input: ...") and cut to MAX_MESSAGE_CHARS."""
    if message.startswith("Failed to predict data") and "\nError: " in message:
        message = message.split("\nError: ", 1)[1]
    message = message.split("\nInput:", 1)[0].strip()
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 3] + "..."
    return message


#: Called when the scoring server shuts down gracefully (the served model's buffers).
_AT_SHUTDOWN: list[Callable[[], Any]] = []


def call_at_server_shutdown(callback: Callable[[], Any]) -> None:
    """Run `callback` when `mlflow models serve` stops cleanly (SIGTERM, Ctrl-C).

    uvicorn re-raises the stopping signal once it has shut down, so the process dies by
    the signal and `atexit` never runs; the app's shutdown handlers do run. The app exists
    only after the model is loaded, so the callbacks are attached at the first request
    (with no request served there is nothing to flush)."""
    _AT_SHUTDOWN.append(callback)


def _attach_shutdown_callbacks() -> None:
    if _INSTALLED.get("shutdown") or not _AT_SHUTDOWN:
        return
    app = getattr(sys.modules.get("mlflow.pyfunc.scoring_server.app"), "app", None)
    if app is None:
        return
    app.router.on_shutdown.extend(_AT_SHUTDOWN)
    _INSTALLED["shutdown"] = _attach_shutdown_callbacks


def install_request_guard(max_request_bytes: int, params_read: tuple[str, ...] = PARAMS) -> bool:
    """Guard MLflow's scoring server in this process (see the module docstring); does
    nothing outside `mlflow models serve` (its model-path variable unset). Idempotent;
    True when the guard is in place. `params_read`: the params the served model reads."""
    from mlflow.pyfunc import scoring_server

    if os.environ.get(scoring_server._SERVER_MODEL_PATH) is None:
        return False
    if scoring_server.invocations is not _INSTALLED.get("guard"):
        _INSTALLED["guard"] = _guarded(scoring_server.invocations, max_request_bytes, params_read)
        scoring_server.invocations = _INSTALLED["guard"]
    return True


def _guarded(
    invocations: Callable[..., Any], max_request_bytes: int, params_read: tuple[str, ...]
) -> Callable[..., Any]:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, ErrorCode
    from mlflow.pyfunc.scoring_server import InvocationsResponse

    def guarded(data: bytes, content_type: str | None, model: Any, input_schema: Any) -> Any:
        _attach_shutdown_callbacks()
        try:
            payload = check_request(data, content_type, max_request_bytes, params_read)
        except RefusedRequestError as refused:
            body = {"error_code": "BAD_REQUEST", "message": str(refused)}
            return InvocationsResponse(json.dumps(body), refused.status, "application/json")
        try:
            answer = direct_answer(model, payload) if plain_json(content_type) else None
            if answer is not None:
                return InvocationsResponse(answer, 200, "application/json")
            return invocations(data, content_type, model, input_schema)
        except MlflowException as error:
            if error.get_http_status_code() >= 500 or "stack_trace" in error.json_kwargs:
                log.error("request failed: %s\n%s", error.message, error.json_kwargs)
                raise _internal_error(MlflowException, INTERNAL_ERROR) from None
            code = ErrorCode.Value(error.error_code)
            raise MlflowException(error_message(error.message), error_code=code) from None
        except Exception:
            log.exception("request failed")
            raise _internal_error(MlflowException, INTERNAL_ERROR) from None

    return guarded


def plain_json(content_type: str | None) -> bool:
    """`application/json`, at most with `charset=utf-8` (what MLflow's own checks pass)."""
    mime, *parameters = (part.strip().lower() for part in (content_type or "").split(";"))
    return mime == "application/json" and all(p == "charset=utf-8" for p in parameters)


def direct_answer(model: Any, payload: dict[str, Any]) -> str | None:
    """The served model's own JSON answer (`answer_json`) when it writes one, skipping
    MLflow's DataFrame round trip; None: MLflow's path answers."""
    from mlflow.exceptions import MlflowException

    try:
        python_model = model.unwrap_python_model()
    except (AttributeError, MlflowException):  # not a python-model pyfunc
        return None
    answer_json = getattr(python_model, "answer_json", None)
    return None if answer_json is None else answer_json(payload)


def _internal_error(exception: type, code: int) -> Any:
    return exception(
        "the model could not answer this request (the server log has the details); check it "
        f"against {REQUEST_EXAMPLE}",
        error_code=code,
    )


class ServerError(RuntimeError):
    """The model server did not come up; the message holds the end of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_command(
    model_uri: str, port: int, workers: int = 1, host: str = "127.0.0.1"
) -> list[str]:
    """MLflow's model server for `model_uri`, from this environment's `mlflow`."""
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
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def server_environment(tracking_uri: str, threads: int = 1) -> dict[str, str]:
    """The environment the model server needs: the registry's tracking URI, and this
    interpreter's bin folder first on PATH, since MLflow starts `uvicorn` by name (without
    it, `.venv/bin/mlflow models serve` from a shell that has not activated the venv dies
    with exit code 127), and `threads` compute threads per worker (the caller's
    `REWEAR_SERVING_THREADS`)."""
    return {
        # Compute threads per worker (torch and OpenMP read these when they start; set
        # per call, OpenMP's limit would hold only for the thread that set it).
        **dict.fromkeys(THREAD_VARIABLES, str(threads)),
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


#: What sizes the compute thread pools of a served model (an explicit value wins).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextmanager
def model_server(
    model_uri: str,
    tracking_uri: str,
    log_path: Path,
    start_timeout_s: float = START_TIMEOUT_S,
    workers: int = 1,
    threads: int = 1,
) -> Iterator[str]:
    """Serve `model_uri` until the block ends; yields the base URL (`http://127.0.0.1:PORT`)."""
    port = free_port()
    env = server_environment(tracking_uri, threads)
    with Path(log_path).open("w") as log:
        server = subprocess.Popen(
            serve_command(model_uri, port, workers),
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
            raise ServerError(f"`{' '.join(server.args)}` did not start:\n{tail}")
        time.sleep(0.5)


def _stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (mlflow -> uvicorn -> worker)."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        # The worker outlives the `mlflow` process by its graceful shutdown (which flushes
        # the served model's buffers): stopped means the whole group is gone.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            os.killpg(server.pid, 0)
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
