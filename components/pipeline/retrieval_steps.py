"""The retrieval phase's steps: the popularity fallback, two-tower training, Annoy index
builds and candidate generation. Plain functions over paths, like
`components.pipeline.data_steps`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import (
    AnnoyConfig,
    CandidatesConfig,
    EvaluationConfig,
    ExecutionConfig,
    LabelHoldout,
    PopularityConfig,
    TwoTowerConfig,
)
from components.data.split import DataSplit, available_at, latest_moment, read_split
from components.evaluation.encoder_validation import encoder_validation
from components.evaluation.protocol import positive_window
from components.pipeline.results import CandidatesResult, EncoderResult, FitResult, IndexResult
from components.pipeline.sharding import (
    RecallSums,
    Shard,
    ShardedStep,
    concatenate_parts,
    publish_shard,
    shard_folder,
    shard_ranges,
    where_it_ran,
)
from components.ranking.dataset import holdout_interactions
from components.retrieval.ann_index import AnnIndex, ann_recall, build_annoy_index
from components.retrieval.candidate_recall import candidate_recall
from components.retrieval.popularity import RecentPopularity
from components.retrieval.stack import RetrievalStack
from components.retrieval.two_tower import TrainedTwoTower, TwoTowerScorer
from components.retrieval.two_tower_training import train_two_tower_stages
from components.store import ParquetAppender, atomic_directory

logger = logging.getLogger(__name__)


def fit(
    split_uri: str, popularity: PopularityConfig, refit_on_all_data: bool, run_dir: Path
) -> FitResult:
    """Fit the popularity fallback twice: on the history before the test cut-off (what
    evaluation scores) and, when configured, on all the snapshot's data (what gets
    registered)."""
    data = read_split(Path(split_uri))
    models = Path(run_dir) / "models"
    held_out = RecentPopularity.fit(data.history("test"), popularity, data.test_cutoff)
    with atomic_directory(models / "evaluation", overwrite=True) as staging:
        held_out.save(staging)
    final_uri = models / "evaluation"
    if refit_on_all_data:
        final = RecentPopularity.fit(data.serving_history(), popularity)
        with atomic_directory(models / "final", overwrite=True) as staging:
            final.save(staging)
        final_uri = models / "final"
    return {"evaluation_model_uri": str(models / "evaluation"), "final_model_uri": str(final_uri)}


def train_encoder(
    split_uri: str,
    two_tower: TwoTowerConfig,
    label_holdout: LabelHoldout,
    evaluation: EvaluationConfig,
    run_dir: Path,
) -> EncoderResult:
    """Train the two-tower encoder twice and save both: one that never saw the ranker's
    labels (the label stage's ANN source and similarity features) and the one the test
    stage and serving use (see `train_label_stage_encoders`)."""
    data = read_split(Path(split_uri))
    started = time.perf_counter()
    fitted, trained = train_label_stage_encoders(data, two_tower, label_holdout, evaluation)
    seconds = time.perf_counter() - started
    target = Path(run_dir) / "models" / "encoder"
    with atomic_directory(target, overwrite=True) as staging:
        trained.save(staging)
    fit_target = Path(run_dir) / "models" / "encoder_train_window"
    with atomic_directory(fit_target, overwrite=True) as staging:
        fitted.save(staging)
    return {
        "uri": str(target),
        "train_window_uri": str(fit_target),
        "epochs": trained.epochs,
        "training_s": round(seconds, 2),
    }


def train_label_stage_encoders(
    data: DataSplit,
    two_tower: TwoTowerConfig,
    label_holdout: LabelHoldout,
    evaluation: EvaluationConfig,
) -> tuple[TrainedTwoTower, TrainedTwoTower]:
    """(encoder for the ranker's label stage, encoder for the test stage and serving).

    Temporal: fitted on the history before the valid window, early-stopped on it (the
    ranker's labels), then refitted on train + valid (`train_two_tower_stages`). Fixed
    split: fitted on what the ranker's holdout keeps of the train file, early-stopped on
    the held-out part (the ranker's labels: the test file is never touched), then refitted
    on the whole train file for the epochs chosen, so that both stages get the two-tower.
    """
    if data.protocol == "temporal":
        validation = encoder_validation(data, two_tower, evaluation)
        return train_two_tower_stages(data, two_tower, "test", validation=validation)
    kept, held = holdout_interactions(data.train, label_holdout.share, label_holdout.seed)
    label_split = replace(data, train=kept, valid=held, test=held)
    validation = encoder_validation(label_split, two_tower, evaluation)
    fitted, _ = train_two_tower_stages(label_split, two_tower, "valid", validation=validation)
    epochs = best_epoch(fitted.epochs)
    logger.info("two-tower: refitting on the whole train file for %d epochs", epochs)
    whole = replace(data, valid=data.valid.iloc[:0])
    refit = two_tower.model_copy(update={"max_epochs": epochs})
    validation = encoder_validation(whole, refit, evaluation)  # None: no valid window
    trained = train_two_tower_stages(whole, refit, "test", validation=validation)[1]
    trained.epochs = [
        *fitted.epochs,
        *({**record, "phase": "refit"} for record in trained.epochs),
    ]
    return fitted, trained


def best_epoch(records: list[dict[str, Any]]) -> int:
    """The early-stopped epoch count: the best monitored epoch (the last one if none)."""
    monitored = [
        (value, record["epoch"])
        for record in records
        for key, value in record.items()
        if key.startswith("valid_recall@")
    ]
    if not monitored:
        return max(1, len(records))
    best = max(value for value, _ in monitored)
    return min(epoch for value, epoch in monitored if value == best)


def two_tower_scorer(encoder_uri: str, data: DataSplit) -> TwoTowerScorer:
    """A run's encoder alone as a Scorer on the test stage (bench/retrieval.py)."""
    return TwoTowerScorer(
        TrainedTwoTower.load(Path(encoder_uri)),
        data.tables.items,
        data.history("test"),
        data.test_cutoff,
    )


def build_index(split_uri: str, encoder_uri: str, annoy: AnnoyConfig, run_dir: Path) -> IndexResult:
    """Two angular Annoy indexes over the listings available at a moment: at the test
    cut-off (offline candidates) and at the end of the data (serving). The ANN recall@K
    against exact search is measured on the evaluation index with real user vectors."""
    data = read_split(Path(split_uri))
    trained = TrainedTwoTower.load(Path(encoder_uri))
    items = data.tables.items
    moments = {
        "evaluation": data.test_cutoff,
        "serving": latest_moment(data.all_interactions(), items),
    }
    uris: dict[str, str] = {}
    figures: dict[str, Any] = {}
    for name, moment in moments.items():
        listings = items[available_at(items, moment).to_numpy()]
        vectors = trained.embed_items(listings, moment)
        started = time.perf_counter()
        index = build_annoy_index(
            vectors, listings["item_id"].astype(str).tolist(), annoy, Path(run_dir) / "index" / name
        )
        uris[name] = str(Path(run_dir) / "index" / name)
        figures[f"{name}_build_s"] = round(time.perf_counter() - started, 3)
        figures[f"{name}_items"] = index.count
        if name == "evaluation":
            figures.update(_index_quality(index, vectors, trained, data, annoy.recall_k, annoy))
    return {
        "evaluation_index_uri": uris["evaluation"],
        "serving_index_uri": uris["serving"],
        "figures": figures,
    }


def _index_quality(
    index: AnnIndex,
    vectors: np.ndarray,
    trained: TrainedTwoTower,
    data: DataSplit,
    k: int,
    annoy: AnnoyConfig,
) -> dict[str, Any]:
    users = data.test["user_id"].drop_duplicates().to_numpy(dtype=object)
    rng = np.random.default_rng(annoy.seed)
    sample = (
        users
        if len(users) <= annoy.recall_sample
        else rng.choice(users, annoy.recall_sample, replace=False)
    )
    queries = trained.embed_users(
        list(sample), data.history("test"), data.test_cutoff, data.tables.items
    )
    recall = ann_recall(index, vectors, queries, k)
    latencies = []
    for row in queries[: min(200, len(queries))]:
        started = time.perf_counter()
        index.query(row[None, :], k)
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        f"ann_recall@{min(k, index.count)}": round(recall, 4),
        "query_p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "query_p99_ms": round(float(np.percentile(latencies, 99)), 3),
    }


def _test_window(data: DataSplit, evaluation: EvaluationConfig) -> tuple[pd.DataFrame, pd.Series]:
    """The test window's positives and their users as strings (the candidates' users, in
    order of first appearance)."""
    window = positive_window(data.test, evaluation)
    return window, window["user_id"].astype(str)


def plan_candidates(
    split_uri: str,
    encoder_uri: str | None,
    evaluation_index_uri: str | None,
    candidates: CandidatesConfig,
    evaluation: EvaluationConfig,
    execution: ExecutionConfig,
    run_dir: Path,
) -> dict[str, Any]:
    """Fit the retrieval stack at the test cut-off, save it (every shard loads it; the
    evaluated model is assembled on it), and cut the test users into shards of whole
    chunks."""
    data = read_split(Path(split_uri))
    stack = RetrievalStack.fit(
        data.history("test"),
        data.tables.items,
        data.test_cutoff,
        data.available_items(data.test_cutoff),
        candidates,
        evaluation.excluded_events,
        encoder=None if encoder_uri is None else TrainedTwoTower.load(Path(encoder_uri)),
        index_folder=None if evaluation_index_uri is None else Path(evaluation_index_uri),
    )
    target = Path(run_dir) / "candidates_stack"
    with atomic_directory(target, overwrite=True) as staging:
        stack.save(staging)
    _, window_users = _test_window(data, evaluation)
    users = int(window_users.nunique())
    return {
        "stack_uri": str(target),
        "users": users,
        "shards": shard_ranges(users, execution.shard_users, candidates.chunk_users),
    }


def candidates_shard(
    split_uri: str,
    encoder_uri: str | None,
    evaluation_index_uri: str | None,
    candidates: CandidatesConfig,
    evaluation: EvaluationConfig,
    execution: ExecutionConfig,
    plan: dict[str, Any],
    shard: Shard,
    run_dir: Path,
) -> dict[str, Any]:
    """One shard's candidates, a chunk of users at a time, into its own parquet part; its
    chunks' candidate recall figures for the combine."""
    data = read_split(Path(split_uri))
    settings = candidates
    stack = RetrievalStack.load(Path(plan["stack_uri"]))
    window, window_users = _test_window(data, evaluation)
    users = window_users.drop_duplicates().tolist()[shard["start"] : shard["stop"]]
    seconds = 0.0
    chunks: list[dict[str, Any]] = []
    with (
        publish_shard(run_dir, "generate_candidates", shard) as staging,
        ParquetAppender(staging / "candidates.parquet") as candidates,
    ):
        # A chunk of users at a time: memory bounded whatever the number of users.
        for start in range(0, len(users), settings.chunk_users):
            chunk = users[start : start + settings.chunk_users]
            started = time.perf_counter()
            hits = stack.source_arrays(chunk)
            merged = stack.candidate_arrays(chunk, hits)
            seconds += time.perf_counter() - started
            positives = window[window_users.isin(chunk).to_numpy()]
            chunks.append(
                {
                    "users": int(positives["user_id"].nunique()),
                    "recall": candidate_recall(merged, positives, settings.n, sources=hits),
                }
            )
            candidates.write(merged.frame())
    folder = shard_folder(run_dir, "generate_candidates", shard)
    return {
        "uri": str(folder / "candidates.parquet"),
        "folder": str(folder),
        "users": len(users),
        "recall_chunks": chunks,
        "generation_s": seconds,
        "ran_on": where_it_ran(),
    }


def combine_candidates(
    split_uri: str,
    encoder_uri: str | None,
    evaluation_index_uri: str | None,
    candidates: CandidatesConfig,
    evaluation: EvaluationConfig,
    execution: ExecutionConfig,
    plan: dict[str, Any],
    parts: list[dict[str, Any]],
    run_dir: Path,
) -> CandidatesResult:
    """The shards' parts as one `candidates/test.parquet` (in shard order: the rows of one
    loop over every user) and their recall figures added up as that loop would have."""
    target = Path(run_dir) / "candidates"
    with atomic_directory(target, overwrite=True) as staging:
        concatenate_parts([Path(part["uri"]) for part in parts], staging / "test.parquet")
    recall = RecallSums()
    for part in parts:
        recall.replay(part["recall_chunks"])
    return {
        "uri": str(target / "test.parquet"),
        "stack_uri": plan["stack_uri"],
        "n": candidates.n,
        "candidate_recall": recall.result(),
        "users": sum(part["users"] for part in parts),
        "generation_s": round(sum(part["generation_s"] for part in parts), 2),
    }


#: The test window's candidates from every configured source, merged, as plan -> shards ->
#: combine (components.pipeline.sharding); the candidate recall@N per source and combined
#: goes to the report. The fitted stack is saved beside them: the evaluated two-stage model
#: is assembled on it (not fitted again) and its evaluation reads these candidates instead
#: of generating them again.
generate_candidates = ShardedStep(
    "generate_candidates", plan_candidates, candidates_shard, combine_candidates
)
