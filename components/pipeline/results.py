"""What each pipeline step and phase returns: small typed records of URIs, ids and figures.

A step's result is a `TypedDict`, so it is plain JSON (Prefect stores it as such and reads
it back without running any code, see flows/stage_records.py) and still has named, typed
fields for the reader and the chain. A phase's result (`DataPhase` ...) bundles its steps'
results for the next phases and the run report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict


class IngestResult(TypedDict):
    uri: str
    content_id: str
    rows: dict[str, int]


class ValidationResult(TypedDict):
    uri: str
    counts: dict[str, Any]
    violations: list[dict[str, Any]]
    exact_duplicate_events: dict[str, Any]
    quarantine_files: dict[str, str]


class SnapshotResult(TypedDict):
    snapshot_id: str
    uri: str


class SplitResult(TypedDict):
    uri: str
    protocol: str
    valid_cutoff: str | None
    test_cutoff: str | None
    rows: dict[str, int]
    users: dict[str, int]


class FitResult(TypedDict):
    evaluation_model_uri: str
    final_model_uri: str


class EncoderResult(TypedDict):
    uri: str
    train_window_uri: str
    epochs: list[dict[str, Any]]
    training_s: float


class IndexResult(TypedDict):
    evaluation_index_uri: str
    serving_index_uri: str
    #: Build times, item counts, ANN recall against exact search and query latency.
    figures: dict[str, float]


class CandidatesResult(TypedDict):
    uri: str
    #: The retrieval stack that generated them (the evaluated model's, loaded not refitted).
    stack_uri: str
    n: int
    candidate_recall: dict[str, float]
    users: int
    generation_s: float


class RankingDataResult(TypedDict):
    uri: str
    #: Rows, label windows, queries, label-stage candidate recall, seconds.
    figures: dict[str, Any]


class RankerResult(TypedDict):
    uri: str
    #: Rows, queries, best iterations, early-stopping NDCG, training time, memory.
    figures: dict[str, Any]
    importance: dict[str, float]
    curves: dict[str, list[float]]


class ModelResult(TypedDict):
    uri: str


class EvaluationResult(TypedDict):
    uri: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    comparisons: dict[str, dict[str, dict[str, Any]]]
    segments: dict[str, dict[str, Any]]
    evaluated_users: int
    #: Users with a positive in the window; more than `evaluated_users` when sampled.
    window_users: int
    figures: list[str]


class BundleResult(TypedDict):
    uri: str
    example_user_id: str


class RegisteredModel(TypedDict):
    name: str
    version: int
    aliases: list[str]
    bundle_uri: str
    example_user_id: str


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
