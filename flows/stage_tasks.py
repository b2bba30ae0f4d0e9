"""The chain's stages as Prefect tasks: each stage with its task options, shard steps
mapped over the flow's task runner, and the ranker on the flow's Dask cluster when there is
one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import prefect
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from components.pipeline.chain import REGISTRY_STAGES, SOURCE_STAGES, Stages
from components.settings import OrchestrationSettings
from flows.task_options import SOURCE_OPTIONS, STAGE_OPTIONS, UNCACHED_OPTIONS


def as_stage_task(stage: str, step: Callable[..., Any]) -> Callable[..., Any]:
    """A pipeline step as the Prefect task of its stage (`components.pipeline.chain.Stages`
    calls it): the source stage caches on its files' fingerprint, registry stages never
    cache, every other stage caches on its inputs and code (see `flows.task_options`)."""
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


def flow_dask_address() -> str | None:
    """The scheduler address of the current flow run's Dask task runner, where the ranker
    trains (None: not Dask, or REWEAR_DASK_RANKER=false)."""
    if not _runs_on_dask() or not OrchestrationSettings().dask_ranker:
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
