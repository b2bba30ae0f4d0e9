"""Task options shared by the flows: cache policies that make a re-run resume from its last
finished stage, retries with backoff on transient I/O errors, timeouts, and the task runner
chosen by the environment (thread pool or Dask).

Stage results are persisted to Prefect's local result storage (`$PREFECT_HOME/storage`,
which every rewear entry point keeps under `REWEAR_HOME/prefect`). A stage's cache key is
the hash of its inputs (the per-run folder excluded: it differs on every run by design),
the task's source, the source of the `components` package and the home itself, so:

- a run killed mid-way and started again re-uses every stage that had finished (their
  outputs are immutable folders, written atomically, named in the cached result);
- the same data with the same config and code gives the same outputs, so a repeat run is a
  cache hit too (ingest keys on the source files' fingerprint, so new data is re-read);
- different homes (tests, environments) never share a cache.

Tasks with side effects outside their own outputs (registry reads and writes) use
`UNCACHED_OPTIONS`.

A cached result is data, never code: results are written as plain JSON (`RESULT_SERIALIZER`,
no object hooks), and the record Prefect looks a key up in (`StageRecords`, under
`<result storage>/keys`) is read back only when it was written that way and every output
folder it names under REWEAR_HOME still exists. Anything else (a planted pickle, a record of
another serializer, a record whose run folder was deleted) reads as absent: the stage runs
again and overwrites it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import prefect
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.logging import get_logger
from prefect.serializers import JSONSerializer
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.config import PipelineConfig, load_config
from components.pipeline.chain import REGISTRY_STAGES, SOURCE_STAGES, Stages
from components.processes import (
    OrchestrationSettings,
    code_fingerprint,
    free_local_port,
    restore_environment,
    source_fingerprint,
    start_process_dying_with_parent,
)
from components.registry.tracking import (
    close_run,
    configure_mlflow,
    fail_abandoned_runs,
    owned_run_tags,
)
from components.settings import RewearSettings
from components.store import exclusive_lock, write_json

#: The components' own progress (encoder epochs, index builds, refits) goes to the console
#: from here; PREFECT_LOGGING_EXTRA_LOGGERS=components (set by the CLI and the deployment
#: set-up) also sends it to the flow run's logs.
PROGRESS_LOGGER = "components"


class _ProgressHandler(logging.StreamHandler):
    """The console handler `show_component_progress` adds (found again by its type). It
    writes to whatever `sys.stderr` is when a record comes, not the stream of the moment
    it was added: a caller that swaps stderr (a test runner, a notebook) and closes the
    old one would otherwise get "Logging error" for every record after."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        """StreamHandler's constructor sets one; it is read at each record instead."""


def show_component_progress() -> None:
    """INFO records of the `components` loggers on the console, once per process (not at
    all when Prefect's extra-loggers setting already gave them its console handler)."""
    progress = logging.getLogger(PROGRESS_LOGGER)
    progress.setLevel(logging.INFO)
    if PROGRESS_LOGGER in (get_current_settings().logging.extra_loggers or []):
        return  # Prefect's logging set-up gives it its console and API handlers
    if not any(isinstance(handler, logging.StreamHandler) for handler in progress.handlers):
        handler = _ProgressHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s.%(msecs)03d | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"
            )
        )
        progress.addHandler(handler)


#: Every long task gets this timeout (seconds); a hung step fails instead of blocking.
LONG_TASK_TIMEOUT_S = 3600
#: Cached stage results older than this are recomputed (run folders may be cleaned up).
CACHE_EXPIRATION = timedelta(days=7)
#: The argument every stage takes for its per-run folder; not part of the cache key.
RUN_DIR_ARGUMENT = "run_dir"


def retry_on_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only transient I/O failures (OSError: disk, network file systems, sockets),
    never bad data or bad config."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False


def _home_and_code(task_ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    """The REWEAR_HOME and tracking store a result belongs to, and the ML code's source."""
    settings = RewearSettings()
    return hash_objects(str(settings.root), settings.tracking_uri, code_fingerprint()) or ""


def _source_data(task_ctx: TaskRunContext, inputs: dict[str, Any]) -> str:
    """The fingerprint of the files the task's `config.source` reads."""
    config = inputs.get("config")
    if config is None:
        raise ValueError("SOURCE_CACHE is for tasks that take a `config` argument")
    return source_fingerprint(config.source)


#: Task results as plain JSON: no object encoder or decoder, so reading one back imports and
#: runs nothing (a stage returns only JSON values: strings, numbers, lists, dicts).
RESULT_SERIALIZER = JSONSerializer(object_encoder=None, object_decoder=None)
#: How a stage record names that serializer (what `StageRecords` accepts).
RESULT_SERIALIZER_RECORD = json.loads(RESULT_SERIALIZER.model_dump_json())
#: The folder, inside Prefect's result storage, of the records stage keys are looked up in.
STAGE_RECORDS_FOLDER = "keys"
_logger = get_logger("rewear.orchestration")


class UntrustedRecordError(ValueError):
    """A stored stage record that must not be reused (Prefect then treats it as absent)."""


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def missing_outputs(result: Any, home: Path) -> list[str]:
    """The paths under `home` named anywhere in a stage's JSON result that no longer exist."""
    if isinstance(result, dict):
        return [p for value in result.values() for p in missing_outputs(value, home)]
    if isinstance(result, list):
        return [p for value in result for p in missing_outputs(value, home)]
    if isinstance(result, str) and Path(result).is_absolute():
        path = Path(result)
        if _within(path, home) and not path.exists():
            return [result]
    return []


def untrusted_reason(record: bytes, storage: Path, home: Path) -> str | None:
    """Why a stage record (Prefect's metadata JSON, its result in `storage`) cannot be
    reused, or None. Parsed with the standard library only: nothing in it is executed."""
    try:
        metadata = json.loads(record)
    except ValueError:
        return "not a JSON record"
    if not isinstance(metadata, dict) or metadata.get("serializer") != RESULT_SERIALIZER_RECORD:
        found = metadata.get("serializer") if isinstance(metadata, dict) else None
        return f"written with serializer {found!r}, not plain JSON"
    if metadata.get("storage_block_id") is not None:
        return "its result lives in a storage block, not in the local result storage"
    result_path = Path(str(metadata.get("storage_key"))).resolve()
    if not _within(result_path, storage.resolve()) or not result_path.is_file():
        return f"its result {result_path} is not a file of the result storage {storage}"
    try:
        result = json.loads(result_path.read_bytes())
    except ValueError:
        return f"its result {result_path} is not JSON"
    missing = missing_outputs(result, home)
    if missing:
        return f"its output {missing[0]} no longer exists"
    return None


class StageRecords(LocalFileSystem):
    """Where stage cache keys are looked up (the cache policies' `key_storage`): Prefect's
    local result storage `/keys`. A record is handed to Prefect only when it is one this
    project writes (plain JSON) and its outputs still exist; otherwise the read fails, which
    Prefect takes as a cache miss, and the stage runs again and rewrites the record."""

    _block_type_name = "rewear stage records"

    def _resolve_path(self, path: str) -> Path:
        folder = self.storage() / STAGE_RECORDS_FOLDER
        resolved = (folder / path).resolve()
        if not _within(resolved, folder):
            raise ValueError(f"{resolved} is outside the stage records folder {folder}")
        return resolved

    @staticmethod
    def storage() -> Path:
        """Prefect's local result storage (resolved when read: REWEAR_HOME/prefect/storage
        for every rewear entry point)."""
        return Path(get_current_settings().results.local_storage_path).expanduser().resolve()

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:
        """The record at `path` if it can be trusted (Prefect passes `_sync`; reads are
        synchronous here either way)."""
        record = self._resolve_path(path).read_bytes()
        reason = untrusted_reason(record, self.storage(), RewearSettings().root)
        if reason is not None:
            _logger.warning("stage record %s not reused (%s): the stage runs again", path, reason)
            raise UntrustedRecordError(f"stage record {path}: {reason}")
        return record

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)


HOME_AND_CODE = CachePolicy.from_cache_key_fn(_home_and_code)
SOURCE_DATA = CachePolicy.from_cache_key_fn(_source_data)
#: Pure stages: inputs (without the run folder) + task source + home and ML code, looked up
#: in the trusted stage records.
STAGE_CACHE = ((INPUTS - RUN_DIR_ARGUMENT) + TASK_SOURCE + HOME_AND_CODE).configure(
    key_storage=StageRecords()
)
#: Reading the source: the above + the source files' fingerprint.
SOURCE_CACHE = STAGE_CACHE + SOURCE_DATA

_common: dict[str, Any] = {
    "timeout_seconds": LONG_TASK_TIMEOUT_S,
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_on_io_error,
}
STAGE_OPTIONS: dict[str, Any] = {
    **_common,
    "cache_policy": STAGE_CACHE,
    "persist_result": True,
    "result_serializer": RESULT_SERIALIZER,
    "cache_expiration": CACHE_EXPIRATION,
}
SOURCE_OPTIONS: dict[str, Any] = {**STAGE_OPTIONS, "cache_policy": SOURCE_CACHE}
UNCACHED_OPTIONS: dict[str, Any] = {**_common, "cache_policy": NO_CACHE}


@dataclass(frozen=True)
class TrackedRun:
    """A flow run's MLflow run and per-run folder (`REWEAR_HOME/runs/<mlflow run id>`)."""

    settings: RewearSettings
    config: PipelineConfig
    client: Any
    run_id: str
    run_dir: Path


def as_stage_task(stage: str, step: Callable[..., Any]) -> Callable[..., Any]:
    """A pipeline step as the Prefect task of its stage (`components.pipeline.chain.Stages`
    calls it): the source stage caches on its files' fingerprint, registry stages never
    cache, every other stage caches on its inputs and code (see the module docstring)."""
    options = STAGE_OPTIONS
    if stage in SOURCE_STAGES:
        options = SOURCE_OPTIONS
    elif stage in REGISTRY_STAGES:
        options = UNCACHED_OPTIONS
    return prefect.task(step, name=stage, **options)


def prefect_stages(timings_s: dict[str, float] | None = None) -> Stages:
    """The chain's stages as Prefect tasks, their wall times kept in `timings_s`; shard
    steps mapped over the flow's task runner (`map_shard_tasks`); on a Dask task runner
    the ranker trains on its cluster (DaskLGBMRanker)."""
    return Stages(
        wrap=as_stage_task,
        timings_s={} if timings_s is None else timings_s,
        mapper=map_shard_tasks,
        dask_address=flow_dask_address(),
    )


def _runs_on_dask() -> bool:
    context = FlowRunContext.get()
    runner = None if context is None else context.task_runner
    return runner is not None and not isinstance(runner, ThreadPoolTaskRunner)


class RankerOnDaskSettings(BaseSettings):
    """`REWEAR_DASK_RANKER` (default true): on a Dask task runner the ranker trains on its
    cluster with DaskLGBMRanker; false: in the flow's process with LightGBM, as on the
    thread pool (the same ranker, so the same metrics, as a thread-pool run)."""

    model_config = SettingsConfigDict(env_prefix="REWEAR_", frozen=True, extra="ignore")

    dask_ranker: bool = True


def flow_dask_address() -> str | None:
    """The scheduler address of the current flow run's Dask task runner, where the ranker
    trains (None: not Dask, or REWEAR_DASK_RANKER=false)."""
    if not _runs_on_dask() or not RankerOnDaskSettings().dask_ranker:
        return None
    context = FlowRunContext.get()
    client = getattr(context.task_runner, "client", None) if context is not None else None
    if client is None:
        return None
    return str(client.scheduler.address)


def map_shard_tasks(
    stage: str,
    step: Callable[..., Any],
    shards: Sequence[dict[str, Any]],
    arguments: dict[str, Any],
) -> list[Any]:
    """A shard step as one Prefect task per shard (task run `<stage>-<number>`, cached and
    retried as the other stages): all submitted at once on Dask (the workers bound the
    memory); otherwise run one at a time in the flow's own thread (memory bounded by a
    shard, as in one process), where the task's timeout can interrupt it (a worker thread's
    cannot, and Prefect warned so for every shard). Results in the shards' order."""
    task = as_stage_task(stage, step)

    def named(shard: dict[str, Any]) -> Any:
        return task.with_options(task_run_name=f"{stage}-{shard['number']:03d}")

    if _runs_on_dask():
        futures = [named(shard).submit(**arguments, shard=shard) for shard in shards]
        return [future.result() for future in futures]
    return [named(shard)(**arguments, shard=shard) for shard in shards]


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


def task_runner_from_settings(settings: OrchestrationSettings | None = None) -> TaskRunner:
    """The task runner `REWEAR_TASK_RUNNER` asks for (see OrchestrationSettings)."""
    settings = settings or OrchestrationSettings()
    if settings.task_runner == "thread_pool":
        return ThreadPoolTaskRunner(max_workers=settings.max_workers)
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return _local_dask_runner_class()(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "threads_per_worker": settings.dask_threads_per_worker,
        },
    )


@functools.cache
def _local_dask_runner_class() -> type[TaskRunner]:
    """A DaskTaskRunner whose local cluster leaves this process's environment as it found it.

    distributed's nanny sets OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS=1 (and
    MALLOC_TRIM_THRESHOLD_) in the *parent's* os.environ before spawning each worker and
    never undoes it: every process started afterwards (a Prefect worker's next flow run, a
    retrain in a subprocess) would run torch, LightGBM and BLAS on one thread: slower, and
    with other float sums, so the same data, config and code would give other figures.
    """
    from prefect_dask import DaskTaskRunner

    class LocalDaskTaskRunner(DaskTaskRunner):
        def __enter__(self) -> LocalDaskTaskRunner:
            self._environment = dict(os.environ)
            return super().__enter__()

        @property
        def client(self) -> Any:
            before = dict(os.environ)
            try:
                return super().client  # starts the cluster, spawning its nannies, once
            finally:
                restore_environment(before)

        def __exit__(self, *args: Any) -> None:
            try:
                super().__exit__(*args)
            finally:
                restore_environment(self._environment)

    return LocalDaskTaskRunner
