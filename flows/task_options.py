"""Task options shared by the flows: cache policies that make a re-run resume from its last
finished stage, retries with backoff on transient I/O errors, and timeouts.

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

Stage records are plain JSON, checked before reuse (`flows.stage_records`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects

from components.fingerprints import code_fingerprint, source_fingerprint
from components.settings import RewearSettings
from flows.stage_records import RESULT_SERIALIZER, StageRecords

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
    """The fingerprint of the files the task's `source` (a source config) reads."""
    source = inputs.get("source")
    if source is None:
        raise ValueError("SOURCE_CACHE is for tasks that take a `source` argument")
    return source_fingerprint(source)


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
