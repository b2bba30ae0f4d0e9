"""The task runner a flow runs its tasks on, as the environment asks (thread pool or Dask;
see `components.settings.OrchestrationSettings`)."""

from __future__ import annotations

import functools
import os
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from components.environment_variables import restore_environment
from components.settings import OrchestrationSettings


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
