"""The run report: `$REWEAR_HOME/runs/<run_id>/report.json`, the one file a user reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from components.store import write_json

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
    split: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)
    model: ModelRef | None = None
    promoted: bool = False
    #: The promotion gate's decision (promoted / rejected / forced), its checks with their
    #: figures, and the fresh-process smoke result; null when the run stopped before it.
    promotion: dict[str, Any] | None = None
    timings_s: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / REPORT_FILE
        write_json(path, self.model_dump(mode="json"))
        return path
