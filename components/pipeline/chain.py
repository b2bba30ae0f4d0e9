"""The retrain chain, written once: its phases in order, each a few named steps.

    data        ingest -> validate -> snapshot -> split
    retrieval   fit -> train_encoder -> build_index -> generate_candidates*
    ranking     build_features* -> train_ranker -> assemble_two_stage (-> assemble_serving)
    evaluation  evaluate*
    publish     compare_with_champion -> register -> promote

Every step is a plain function of `components.pipeline.*_steps`. A phase hands each one to
a `Stages` runner with its stage name: called directly (benchmarks, notebooks, tests) or,
in `flows.retrain`, wrapped as a Prefect task with the stage's cache and retry options.
The flow and the bench scripts therefore run the same chain, branches included.

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

from components.config import PipelineConfig
from components.pipeline import (
    data_steps,
    evaluation_steps,
    publish_steps,
    ranking_steps,
    retrieval_steps,
)
from components.pipeline.report import RunReport
from components.pipeline.results import (
    CandidatesResult,
    EncoderResult,
    EvaluationResult,
    FitResult,
    IndexResult,
    ModelResult,
    RankerResult,
    RankingDataResult,
    RegisteredModel,
    SnapshotResult,
    SplitResult,
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
    wall time under the stage's name.

    A per-user stage (`sharded`) runs as plan -> one shard step per shard -> combine
    (`components.pipeline.sharding`); its shards go through `map`: one after the other
    here, or through `mapper` (the flow's: one Prefect task per shard on its task runner,
    the Dask workers with REWEAR_TASK_RUNNER=dask). `dask_address`: the cluster the flow's
    tasks run on, where the ranker then trains too (DaskLGBMRanker)."""

    wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    mapper: Mapper | None = None
    dask_address: str | None = None

    def __call__(self, stage: str, step: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        try:
            return self._call(stage, step, *args, **kwargs)
        finally:
            self.timings_s[stage] = round(time.perf_counter() - started, 3)

    def _call(self, stage: str, step: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        call = step if self.wrap is None else self.wrap(stage, step)
        return call(*args, **kwargs)

    def map(
        self,
        stage: str,
        step: Callable[..., T],
        shards: Sequence[Shard],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> list[T]:
        """`step(*args, shard, **kwargs)` for every shard, results in the shards' order."""
        if self.mapper is not None:
            return self.mapper(stage, step, shards, args, kwargs)
        return [self._call(stage, step, *args, shard, **kwargs) for shard in shards]

    def sharded(self, stage: str, steps: ShardedStep, /, *args: Any, run_dir: Path) -> Any:
        """A per-user stage: `<stage>.plan`, the `<stage>.shard` steps mapped over its shards,
        `<stage>.combine`; its wall time (all three) under `stage`."""
        started = time.perf_counter()
        try:
            plan = self._call(f"{stage}.plan", steps.plan, *args, run_dir=run_dir)
            parts = self.map(
                f"{stage}.shard", steps.shard, plan["shards"], *args, plan, run_dir=run_dir
            )
            return self._call(
                f"{stage}.combine", steps.combine, *args, plan, parts, run_dir=run_dir
            )
        finally:
            self.timings_s[stage] = round(time.perf_counter() - started, 3)


#: How a flow maps a shard step: (stage, step, shards, args, kwargs) -> the step's results
#: in the shards' order (`step(*args, shard, **kwargs)` each).
Mapper = Callable[
    [str, Callable[..., Any], Sequence[Shard], tuple[Any, ...], dict[str, Any]], list[Any]
]


def ranker_config(config: PipelineConfig, run: Stages) -> PipelineConfig:
    """`config` for the ranker's training: on the cluster the flow's tasks run on
    (`run.dask_address`) unless `model.ranker.dask_address` names one already."""
    ranker = config.model.ranker
    if run.dask_address is None or ranker.dask_address is not None:
        return config
    ranker = ranker.model_copy(update={"dask_address": run.dask_address})
    return config.model_copy(update={"model": config.model.model_copy(update={"ranker": ranker})})


@dataclass(frozen=True)
class DataPhase:
    validated: ValidationResult
    snapshot: SnapshotResult
    split: SplitResult

    @property
    def split_uri(self) -> str:
        return self.split["uri"]


@dataclass(frozen=True)
class RetrievalPhase:
    fitted: FitResult
    encoder: EncoderResult | None
    indexes: IndexResult | None
    candidates: CandidatesResult

    @property
    def encoder_uri(self) -> str | None:
        return None if self.encoder is None else self.encoder["uri"]

    @property
    def train_window_encoder_uri(self) -> str | None:
        """The encoder that never saw the ranker's labels (see `train_encoder`)."""
        return None if self.encoder is None else self.encoder["train_window_uri"]

    @property
    def evaluation_index_uri(self) -> str | None:
        return None if self.indexes is None else self.indexes["evaluation_index_uri"]

    @property
    def serving_index_uri(self) -> str | None:
        return None if self.indexes is None else self.indexes["serving_index_uri"]


@dataclass(frozen=True)
class RankingPhase:
    ranking_data: RankingDataResult | None
    ranker: RankerResult | None
    #: The two-stage model at the test cut-off: what evaluation scores.
    evaluated: ModelResult
    #: The two-stage model at the end of the data: what gets registered (the evaluated
    #: one when `model.refit_on_all_data` is false).
    served: ModelResult


@dataclass(frozen=True)
class PublishPhase:
    registered: RegisteredModel
    promotion: dict[str, Any]


def validated_source(config: PipelineConfig, run_dir: Path, run: Stages) -> ValidationResult:
    """The source read and checked, bad rows quarantined (what the index refresh and the
    monitor start from too)."""
    raw = run("ingest", data_steps.ingest, config, run_dir)
    return run("validate", data_steps.validate, raw["uri"], config, run_dir)


def data_phase(
    config: PipelineConfig, run_dir: Path, snapshots_root: Path, run: Stages
) -> DataPhase:
    """The source read, checked, content-addressed and split; a test window too thin to
    measure fails here, before any training."""
    validated = validated_source(config, run_dir, run)
    snapshot = run("snapshot", data_steps.snapshot, validated["uri"], snapshots_root)
    split = run(
        "split", data_steps.split, snapshot["uri"], config.split, run_dir, evaluated_by=config
    )
    return DataPhase(validated, snapshot, split)


def retrieval_phase(
    config: PipelineConfig, split_uri: str, run_dir: Path, run: Stages
) -> RetrievalPhase:
    """The popularity fallback, the two-tower encoder and its indexes (when configured),
    and the test window's candidates from every source, with their recall."""
    fitted = run("fit", retrieval_steps.fit, split_uri, config.model, run_dir)
    encoder = indexes = None
    if config.model.uses_two_tower:
        encoder = run(
            "train_encoder",
            retrieval_steps.train_encoder,
            split_uri,
            config.model,
            config.evaluation,
            run_dir,
        )
        indexes = run(
            "build_index", retrieval_steps.build_indexes, split_uri, encoder["uri"], config, run_dir
        )
    candidates = run.sharded(
        "generate_candidates",
        retrieval_steps.CANDIDATES,
        split_uri,
        None if encoder is None else encoder["uri"],
        None if indexes is None else indexes["evaluation_index_uri"],
        config,
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
            "build_features",
            ranking_steps.RANKING_DATA,
            split_uri,
            retrieval.train_window_encoder_uri,
            config,
            run_dir=run_dir,
        )
        ranker = run(
            "train_ranker",
            ranking_steps.train_ranker_step,
            ranking_data["uri"],
            ranker_config(config, run),
            run_dir,
        )
    ranker_uri = None if ranker is None else ranker["uri"]

    stack_uri = retrieval.candidates["stack_uri"]
    evaluated = run(
        "assemble_two_stage",
        ranking_steps.assemble_two_stage,
        split_uri,
        retrieval.encoder_uri,
        retrieval.evaluation_index_uri,
        ranker_uri,
        config,
        run_dir,
        "evaluation",
        stack_uri,
    )
    served = evaluated
    if config.model.refit_on_all_data:
        served = run(
            "assemble_serving",
            ranking_steps.assemble_two_stage,
            split_uri,
            retrieval.encoder_uri,
            retrieval.serving_index_uri,
            ranker_uri,
            config,
            run_dir,
            "serving",
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
        "evaluate",
        evaluation_steps.EVALUATION,
        split_uri,
        ranking.evaluated["uri"],
        retrieval.candidates["uri"],
        config.evaluation,
        config.execution,
        run_dir=run_dir,
    )


def champion_comparison(
    config: PipelineConfig, data: DataPhase, ranking: RankingPhase, run_dir: Path, run: Stages
) -> dict[str, Any] | None:
    """The challenger against the registry's champion on data neither has seen (None: no
    champion yet)."""
    return run(
        "compare_with_champion",
        publish_steps.compare_with_registered_champion,
        data.split_uri,
        ranking.evaluated["uri"],
        data.snapshot["snapshot_id"],
        config,
        run_dir,
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
        "register",
        publish_steps.register,
        data.split_uri,
        retrieval.fitted["final_model_uri"],
        config,
        run_dir,
        report.run_id,
        report.version_tags(config),
        retrieval.encoder_uri,
        retrieval.serving_index_uri,
        ranking.served["uri"],
    )
    promotion = run(
        "promote",
        publish_steps.promote,
        registered,
        report.champion_comparison,
        report.metrics,
        config,
        force_promote,
    )
    return PublishPhase(registered, promotion)
