"""What each pipeline step returns: small typed records of URIs, ids and figures.

They are `TypedDict`s, so a step's result is plain JSON (Prefect stores it as such and
reads it back without running any code, see flows/orchestration.py) and still has named,
typed fields for the reader and the chain.
"""

from __future__ import annotations

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
