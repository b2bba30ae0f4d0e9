"""The retrain chain, written once: its phases in order, each a few named steps.

    data        ingest -> validate -> snapshot -> split
    retrieval   fit -> train_encoder -> build_index -> generate_candidates*
    ranking     build_features* -> train_ranker -> assemble_two_stage (-> assemble_serving)
    evaluation  evaluate*
    publish     compare_with_champion -> register -> promote

Every step is a plain function of `components.pipeline.*_steps` with the stage's name
(`data_steps.ingest` is the stage `ingest`). A phase hands each one, with keyword
arguments, to a `Stages` runner: called directly (benchmarks, notebooks, tests) or, in
`flows.retrain`, wrapped as a Prefect task with the stage's cache and retry options.
The flow and the bench scripts therefore run the same chain, branches included.

Each step is handed only the config sections it reads (`source=config.source`,
`annoy=config.model.annoy`, ...), never the whole `PipelineConfig` (the registry stages,
never cached, excepted): a stage's cache key then moves only with its own settings.

The per-user stages (*) are sharded (`components.pipeline.sharding`): a plan, one shard
step per shard of at most `execution.shard_users` users, an exact combine. `Stages` runs
the shards one after the other; the flow maps them as Prefect tasks over its task runner.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from components.config import PipelineConfig, RankerConfig
from components.memory import return_freed_memory
from components.pipeline import (
    data_steps,
    evaluation_steps,
    publish_steps,
    ranking_steps,
    retrieval_steps,
)
from components.pipeline.report import RunReport
from components.pipeline.results import (
    DataPhase,
    EvaluationResult,
    PublishPhase,
    RankingPhase,
    RetrievalPhase,
    ValidationResult,
)
from components.pipeline.sharding import Shard, ShardedStep

T = TypeVar("T")

#: The stage that reads the outside world: cached on the source files' fingerprint.
SOURCE_STAGES = frozenset({"ingest"})
#: Stages that read or write the registry: never cached, they run again on a resume.
REGISTRY_STAGES = frozenset({"compare_with_champion", "register", "promote"})


@dataclass
class Stages:
    """Runs each step, directly or through `wrap` (the flow's Prefect task), and keeps its
    wall time under the stage's name, which is the step's own name: a stage name leads to
    its function in one hop.

    A step is called with keyword arguments only. A per-user stage (`sharded`) runs as plan
    -> one shard step per shard -> combine (`components.pipeline.sharding`); its shards go
    through `map`: one after the other here, or through `mapper` (the flow's: one Prefect
    task per shard on its task runner, the Dask workers with REWEAR_TASK_RUNNER=dask).
    `dask_address`: the cluster the flow's tasks run on, where the ranker then trains too
    (DaskLGBMRanker)."""

    wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    mapper: Mapper | None = None
    dask_address: str | None = None

    def __call__(self, step: Callable[..., T], /, **arguments: Any) -> T:
        """`step(**arguments)` as the stage `step.__name__`."""
        stage = step.__name__
        started = time.perf_counter()
        try:
            return self._call(stage, step, **arguments)
        finally:
            self.timings_s[stage] = round(time.perf_counter() - started, 3)

    def _call(self, stage: str, step: Callable[..., T], /, **arguments: Any) -> T:
        call = step if self.wrap is None else self.wrap(stage, step)
        try:
            return call(**arguments)
        finally:
            return_freed_memory()  # the next stage's peak must not sit on this one's

    def map(
        self, stage: str, step: Callable[..., T], shards: Sequence[Shard], /, **arguments: Any
    ) -> list[T]:
        """`step(**arguments, shard=shard)` for every shard, results in the shards' order."""
        if self.mapper is not None:
            return self.mapper(stage, step, shards, arguments)
        return [self._call(stage, step, **arguments, shard=shard) for shard in shards]

    def sharded(self, steps: ShardedStep, /, *, run_dir: Path, **arguments: Any) -> Any:
        """A per-user stage: `<name>.plan`, the `<name>.shard` steps mapped over its shards,
        `<name>.combine`; its wall time (all three) under the stage's name."""
        stage = steps.name
        started = time.perf_counter()
        try:
            plan = self._call(f"{stage}.plan", steps.plan, **arguments, run_dir=run_dir)
            parts = self.map(
                f"{stage}.shard",
                steps.shard,
                plan["shards"],
                **arguments,
                plan=plan,
                run_dir=run_dir,
            )
            return self._call(
                f"{stage}.combine",
                steps.combine,
                **arguments,
                plan=plan,
                parts=parts,
                run_dir=run_dir,
            )
        finally:
            self.timings_s[stage] = round(time.perf_counter() - started, 3)


#: How a flow maps a shard step: (stage, step, shards, arguments) -> the step's results in
#: the shards' order (`step(**arguments, shard=shard)` each).
Mapper = Callable[[str, Callable[..., Any], Sequence[Shard], dict[str, Any]], list[Any]]


def ranker_config(config: PipelineConfig, run: Stages) -> RankerConfig:
    """The ranker's settings for its training: on the cluster the flow's tasks run on
    (`run.dask_address`) unless `model.ranker.dask_address` names one already."""
    ranker = config.model.ranker
    if run.dask_address is None or ranker.dask_address is not None:
        return ranker
    return ranker.model_copy(update={"dask_address": run.dask_address})


def validated_source(config: PipelineConfig, run_dir: Path, run: Stages) -> ValidationResult:
    """The source read and checked, bad rows quarantined (what the index refresh and the
    monitor start from too)."""
    raw = run(data_steps.ingest, source=config.source, run_dir=run_dir)
    return run(
        data_steps.validate, raw_uri=raw["uri"], validation=config.validation, run_dir=run_dir
    )


def data_phase(
    config: PipelineConfig, run_dir: Path, snapshots_root: Path, run: Stages
) -> DataPhase:
    """The source read, checked, content-addressed and split; a test window too thin to
    measure fails here, before any training."""
    validated = validated_source(config, run_dir, run)
    snapshot = run(
        data_steps.snapshot, validated_uri=validated["uri"], snapshots_root=snapshots_root
    )
    split = run(
        data_steps.split,
        snapshot_uri=snapshot["uri"],
        config=config.split,
        run_dir=run_dir,
        evaluation=config.evaluation,
        min_test_users=config.registry.promotion.min_users,
    )
    return DataPhase(validated, snapshot, split)


def retrieval_phase(
    config: PipelineConfig, split_uri: str, run_dir: Path, run: Stages
) -> RetrievalPhase:
    """The popularity fallback, the two-tower encoder and its indexes (when configured),
    and the test window's candidates from every source, with their recall."""
    fitted = run(
        retrieval_steps.fit,
        split_uri=split_uri,
        popularity=config.model.popularity,
        refit_on_all_data=config.model.refit_on_all_data,
        run_dir=run_dir,
    )
    encoder = indexes = None
    if config.model.uses_two_tower:
        encoder = run(
            retrieval_steps.train_encoder,
            split_uri=split_uri,
            two_tower=config.model.two_tower,
            label_holdout=config.model.ranker.label_holdout,
            evaluation=config.evaluation,
            run_dir=run_dir,
        )
        indexes = run(
            retrieval_steps.build_index,
            split_uri=split_uri,
            encoder_uri=encoder["uri"],
            annoy=config.model.annoy,
            run_dir=run_dir,
        )
    candidates = run.sharded(
        retrieval_steps.generate_candidates,
        split_uri=split_uri,
        encoder_uri=None if encoder is None else encoder["uri"],
        evaluation_index_uri=None if indexes is None else indexes["evaluation_index_uri"],
        candidates=config.model.candidates,
        evaluation=config.evaluation,
        execution=config.execution,
        run_dir=run_dir,
    )
    return RetrievalPhase(fitted, encoder, indexes, candidates)


def ranking_phase(
    config: PipelineConfig,
    split_uri: str,
    retrieval: RetrievalPhase,
    run_dir: Path,
    run: Stages,
) -> RankingPhase:
    """The LightGBM ranker on the label stages (when enabled), then the two-stage model
    assembled at the test cut-off and, with the refit, at the end of the data."""
    ranking_data = ranker = None
    if config.model.ranker.enabled:
        ranking_data = run.sharded(
            ranking_steps.build_features,
            split_uri=split_uri,
            train_window_encoder_uri=retrieval.train_window_encoder_uri,
            model=config.model,
            exclude_events=config.evaluation.excluded_events,
            execution=config.execution,
            run_dir=run_dir,
        )
        ranker = run(
            ranking_steps.train_ranker,
            features_uri=ranking_data["uri"],
            ranker=ranker_config(config, run),
            run_dir=run_dir,
        )
    ranker_uri = None if ranker is None else ranker["uri"]

    evaluated = run(
        ranking_steps.assemble_two_stage,
        split_uri=split_uri,
        encoder_uri=retrieval.encoder_uri,
        index_uri=retrieval.evaluation_index_uri,
        ranker_uri=ranker_uri,
        model=config.model,
        exclude_events=config.evaluation.excluded_events,
        run_dir=run_dir,
        purpose="evaluation",
        stack_uri=retrieval.candidates["stack_uri"],
    )
    served = evaluated
    if config.model.refit_on_all_data:
        served = run(
            ranking_steps.assemble_serving,
            split_uri=split_uri,
            encoder_uri=retrieval.encoder_uri,
            index_uri=retrieval.serving_index_uri,
            ranker_uri=ranker_uri,
            model=config.model,
            exclude_events=config.evaluation.excluded_events,
            run_dir=run_dir,
        )
    return RankingPhase(ranking_data, ranker, evaluated, served)


def evaluation_phase(
    config: PipelineConfig,
    split_uri: str,
    retrieval: RetrievalPhase,
    ranking: RankingPhase,
    run_dir: Path,
    run: Stages,
) -> EvaluationResult:
    """The held-out model beside every baseline on the test window, same code for all; the
    model reads the test candidates the retrieval phase generated."""
    return run.sharded(
        evaluation_steps.evaluate,
        split_uri=split_uri,
        evaluation_model_uri=ranking.evaluated["uri"],
        candidates_uri=retrieval.candidates["uri"],
        config=config.evaluation,
        execution=config.execution,
        run_dir=run_dir,
    )


def champion_comparison(
    config: PipelineConfig, data: DataPhase, ranking: RankingPhase, run_dir: Path, run: Stages
) -> dict[str, Any] | None:
    """The challenger against the registry's champion on data neither has seen (None: no
    champion yet)."""
    return run(
        publish_steps.compare_with_champion,
        split_uri=data.split_uri,
        model_uri=ranking.evaluated["uri"],
        snapshot_id=data.snapshot["snapshot_id"],
        config=config,
        run_dir=run_dir,
    )


def publish_phase(
    config: PipelineConfig,
    data: DataPhase,
    retrieval: RetrievalPhase,
    ranking: RankingPhase,
    report: RunReport,
    run_dir: Path,
    run: Stages,
    force_promote: bool = False,
) -> PublishPhase:
    """Register the served bundle under the report's MLflow run, tagged with its lineage
    and metrics; then the promotion gate weighs the report's metrics and champion
    comparison and decides whether it becomes `champion`."""
    registered = run(
        publish_steps.register,
        split_uri=data.split_uri,
        final_model_uri=retrieval.fitted["final_model_uri"],
        config=config,
        run_dir=run_dir,
        run_id=report.run_id,
        tags=report.version_tags(config),
        encoder_uri=retrieval.encoder_uri,
        serving_index_uri=retrieval.serving_index_uri,
        two_stage_uri=ranking.served["uri"],
    )
    promotion = run(
        publish_steps.promote,
        registered=registered,
        comparison=report.champion_comparison,
        metrics=report.metrics,
        config=config,
        force=force_promote,
    )
    return PublishPhase(registered, promotion)
