"""The run report: `$REWEAR_HOME/runs/<run_id>/report.json`, the one file a user reads.

The retrain records each phase's results in it as they come (`record_*`), so that a run
failing half-way still reports what it had done; `log_report` and `log_ranker_curves` put
the same figures in the MLflow run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from components.config import PipelineConfig, config_hash
from components.registry.registration import git_commit, mlflow_key, model_tags
from components.store import read_json, write_json

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.pipeline.results import (
        DataPhase,
        EvaluationResult,
        PublishPhase,
        RankerResult,
        RankingPhase,
        RetrievalPhase,
    )

REPORT_FILE = "report.json"


class ModelRef(BaseModel):
    name: str
    version: int | None = None
    aliases: list[str] = Field(default_factory=list)


class RunReport(BaseModel):
    run_id: str
    status: Literal["running", "completed", "failed"] = "running"
    dataset: str
    config_hash: str
    git_commit: str
    snapshot_id: str | None = None
    protocol: Literal["temporal", "fixed"]
    #: What the registered recommender is: kind (two_stage or retrieval_fusion), its
    #: candidate sources, and its ranker (ModelConfig.describe).
    recommender: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    valid_metrics: dict[str, float] = Field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict)
    #: Paired bootstrap 95% intervals of model - baseline, per baseline and metric.
    comparisons: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    #: Per segment (cold_users, new_items): its size and each model's metrics.
    segments: dict[str, dict[str, Any]] = Field(default_factory=dict)
    figures: list[str] = Field(default_factory=list)
    #: Candidate recall@N on the test window, per source and `combined` (N in retrieval).
    candidate_recall: dict[str, float] = Field(default_factory=dict)
    #: Encoder training (epochs, time), index builds (ANN recall vs exact, latency), and
    #: candidate generation figures.
    retrieval: dict[str, Any] = Field(default_factory=dict)
    #: The ranker stage: label-stage figures, best iteration, training time and memory, the
    #: top gain importances.
    ranking: dict[str, Any] = Field(default_factory=dict)
    #: Challenger (this run) vs the current champion, paired over users on unseen data;
    #: null when there is no champion yet.
    champion_comparison: dict[str, Any] | None = None
    evaluated_users: int | None = None
    #: The test window's users with a positive (evaluation.max_users samples above it).
    window_users: int | None = None
    split: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)
    model: ModelRef | None = None
    promoted: bool = False
    #: The promotion gate's decision (promoted / rejected / forced), its checks with their
    #: figures, and the fresh-process smoke result; null when the run stopped before it.
    promotion: dict[str, Any] | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    #: What the run finished despite, and a user should know (a safety net reached).
    warnings: list[str] = Field(default_factory=list)
    error: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def start(cls, run_id: str, config: PipelineConfig) -> RunReport:
        """The report of a run that is about to start: what is trained, from which code."""
        return cls(
            run_id=run_id,
            dataset=config.name,
            config_hash=config_hash(config),
            git_commit=git_commit(),
            protocol=config.split.protocol,
            recommender=config.model.describe(),
            config=config.model_dump(mode="json"),
        )

    def record_data(self, data: DataPhase) -> None:
        self.validation = {k: v for k, v in data.validated.items() if k != "uri"}
        self.snapshot_id = data.snapshot["snapshot_id"]
        self.split = {k: v for k, v in data.split.items() if k != "uri"}

    def record_retrieval(self, retrieval: RetrievalPhase) -> None:
        if retrieval.encoder is not None and retrieval.indexes is not None:
            self.retrieval = {
                "encoder_training_s": retrieval.encoder["training_s"],
                "encoder_epochs": retrieval.encoder["epochs"],
                **retrieval.indexes["figures"],
            }
            self.valid_metrics = best_valid(retrieval.encoder["epochs"])
            self.warnings.extend(safety_net_warnings(retrieval.encoder["epochs"]))
        candidates = retrieval.candidates
        self.candidate_recall = candidates["candidate_recall"]
        self.retrieval["candidates"] = {
            "n": candidates["n"],
            "users": candidates["users"],
            "generation_s": candidates["generation_s"],
        }

    def record_ranking(self, ranking: RankingPhase) -> None:
        if ranking.ranking_data is not None and ranking.ranker is not None:
            self.ranking = {
                "label_stage": ranking.ranking_data["figures"],
                **ranking.ranker["figures"],
                "importance": ranking.ranker["importance"],
            }

    def record_evaluation(self, evaluation: EvaluationResult) -> None:
        self.metrics = evaluation["metrics"]
        self.baselines = evaluation["baselines"]
        self.evaluated_users = evaluation["evaluated_users"]
        self.window_users = evaluation["window_users"]
        self.comparisons = evaluation["comparisons"]
        self.segments = evaluation["segments"]
        self.figures = evaluation["figures"]

    def record_publish(self, published: PublishPhase) -> None:
        registered, promotion = published.registered, dict(published.promotion)
        self.model = ModelRef(
            name=registered["name"],
            version=registered["version"],
            aliases=promotion.pop("aliases"),
        )
        self.promotion = promotion
        self.promoted = promotion["promoted"]
        self.status = "completed"

    def record_failure(self, error: BaseException, run_dir: Path) -> None:
        self.status = "failed"
        self.error = f"{type(error).__name__}: {error}"
        validation_summary = Path(run_dir) / "validation.json"
        if not self.validation and validation_summary.is_file():
            # Validation failed: its counts and quarantine files still belong in the report.
            self.validation = read_json(validation_summary)

    def version_tags(self, config: PipelineConfig) -> dict[str, str]:
        """The registered version's tags: its lineage, what it is, its test metrics."""
        return {
            "snapshot_id": str(self.snapshot_id),
            "git_commit": self.git_commit,
            "config_hash": self.config_hash,
            "dataset": self.dataset,
            "run_id": self.run_id,
            **model_tags(config.model),
            **{f"metric.{mlflow_key(k)}": f"{v:.6f}" for k, v in self.metrics.items()},
        }

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / REPORT_FILE
        write_json(path, self.model_dump(mode="json"))
        return path


def safety_net_warnings(epochs: list[dict[str, Any]]) -> list[str]:
    """A warning per encoder phase that the time safety net stopped: its model depends on
    how busy the machine was."""
    return [
        f"encoder {epoch.get('phase', 'fit')} stopped by the safety net "
        f"model.two_tower.max_training_seconds at epoch {epoch['epoch']}: the same snapshot "
        "and config may give another model on another day; raise the limit"
        for epoch in epochs
        if epoch.get("safety_net_reached")
    ]


def best_valid(epochs: list[dict[str, Any]]) -> dict[str, float]:
    """The encoder's early-stopping figures (valid window, exact search): each one's best."""
    best: dict[str, float] = {}
    for epoch in epochs:
        for key, value in epoch.items():
            if key.startswith("valid_") and isinstance(value, int | float):
                name = key.removeprefix("valid_")
                best[name] = max(best.get(name, float("-inf")), float(value))
    return best


def log_report(client: MlflowClient, run_id: str, report: RunReport) -> None:
    """The report's figures as MLflow metrics: test, valid, candidate recall, baselines,
    the encoder's per-epoch curves and index figures; and its figure files."""
    for name, value in report.metrics.items():
        client.log_metric(run_id, f"test.{mlflow_key(name)}", value)
    for name, value in report.valid_metrics.items():
        client.log_metric(run_id, f"valid.{mlflow_key(name)}", value)
    for source, value in report.candidate_recall.items():
        client.log_metric(run_id, f"candidate_recall.{source}", value)
    for baseline, metrics in report.baselines.items():
        for name, value in metrics.items():
            client.log_metric(run_id, f"baseline.{baseline}.{mlflow_key(name)}", value)
    for step, epoch in enumerate(report.retrieval.get("encoder_epochs", [])):
        for key, value in epoch.items():
            if _is_number(value):
                client.log_metric(run_id, f"encoder.{mlflow_key(key)}", float(value), step=step)
    for key, value in report.retrieval.items():
        if key != "encoder_training_s" and _is_number(value):
            client.log_metric(run_id, f"index.{mlflow_key(key)}", float(value))
    for figure in report.figures:
        client.log_artifact(run_id, figure, "figures")


def log_ranker_curves(client: MlflowClient, run_id: str, ranker: RankerResult | None) -> None:
    """LightGBM training curves (per boosting round), gain importances and timings."""
    if ranker is None:
        return
    for curve, values in ranker["curves"].items():
        for step, value in enumerate(values):
            client.log_metric(run_id, f"ranker.{mlflow_key(curve)}", value, step=step)
    for feature, gain in ranker["importance"].items():
        client.log_metric(run_id, f"ranker.gain.{feature}", gain)
    client.log_dict(run_id, ranker["importance"], "ranker/importance.json")
    for key in ("best_iteration", "training_s", "peak_rss_mb", "fit_rows", "ensemble_size"):
        client.log_metric(run_id, f"ranker.{key}", float(ranker["figures"][key]))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
