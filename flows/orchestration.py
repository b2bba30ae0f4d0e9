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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects

from components.config import PipelineConfig, load_config
from components.orchestration import OrchestrationSettings, code_fingerprint, source_fingerprint
from components.registry.tracking import configure_mlflow
from components.settings import RewearSettings
from components.store import write_json

#: The components' own progress (encoder epochs, index builds, refits) goes to the console
#: from here; PREFECT_LOGGING_EXTRA_LOGGERS=components (set by the CLI and the deployment
#: set-up) also sends it to the flow run's logs.
PROGRESS_LOGGER = "components"


class _ProgressHandler(logging.StreamHandler):
    """The console handler `show_component_progress` adds (found again by its type)."""


def show_component_progress() -> None:
    """INFO records of the `components` loggers on the console, once per process."""
    progress = logging.getLogger(PROGRESS_LOGGER)
    progress.setLevel(logging.INFO)
    if not any(isinstance(handler, _ProgressHandler) for handler in progress.handlers):
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


HOME_AND_CODE = CachePolicy.from_cache_key_fn(_home_and_code)
SOURCE_DATA = CachePolicy.from_cache_key_fn(_source_data)
#: Pure stages: inputs (without the run folder) + task source + home and ML code.
STAGE_CACHE = (INPUTS - RUN_DIR_ARGUMENT) + TASK_SOURCE + HOME_AND_CODE
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


def start_tracked_run(kind: str, config_path: str, overrides: dict[str, Any] | None) -> TrackedRun:
    """Load the config, open an MLflow run tagged with the flow `kind`, make its folder."""
    show_component_progress()
    settings = RewearSettings().ensure()
    config = load_config(config_path, overrides)
    client, experiment_id = configure_mlflow(settings, config.registry.experiment)
    run = client.create_run(
        experiment_id,
        run_name=f"{kind}-{config.name}",
        tags={"rewear.dataset": config.name, "rewear.kind": kind},
    )
    run_dir = settings.runs / run.info.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    return TrackedRun(settings, config, client, run.info.run_id, run_dir)


def finish_tracked_run(run: TrackedRun, report: dict[str, Any], failed: bool) -> None:
    """Write `report.json` in the run folder, log it, and close the MLflow run."""
    write_json(run.run_dir / "report.json", report)
    run.client.log_artifact(run.run_id, str(run.run_dir / "report.json"))
    run.client.set_terminated(run.run_id, "FAILED" if failed else "FINISHED")


def task_runner_from_settings(settings: OrchestrationSettings | None = None) -> TaskRunner:
    """The task runner `REWEAR_TASK_RUNNER` asks for (see OrchestrationSettings)."""
    settings = settings or OrchestrationSettings()
    if settings.task_runner == "thread_pool":
        return ThreadPoolTaskRunner(max_workers=settings.max_workers)
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "threads_per_worker": settings.dask_threads_per_worker,
        },
    )
