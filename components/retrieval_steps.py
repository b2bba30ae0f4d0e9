"""The retrieval stage's steps (two-tower training, Annoy index builds, candidate generation)
as plain functions over paths and configs, like `components.steps`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from components.config import EvaluationConfig, ModelConfig, PipelineConfig
from components.data.split import DataSplit, available_at, latest_moment, read_split
from components.evaluation.protocol import Scorer
from components.retrieval.ann_index import AnnIndex, ann_recall, build_annoy_index
from components.retrieval.baselines import fit_baselines
from components.retrieval.candidates import (
    AnnSource,
    CandidateFilter,
    CandidateSource,
    CategoryPopularitySource,
    ScorerSource,
    candidate_recall,
    merge_candidates,
    run_sources,
)
from components.retrieval.popularity import RecentPopularity
from components.retrieval.two_tower import TrainedTwoTower, TwoTowerScorer, train_two_tower
from components.store import atomic_directory

TWO_TOWER = "two_tower"


def train_encoder(
    split_uri: str, config: ModelConfig, evaluation: EvaluationConfig, run_dir: Path
) -> dict[str, Any]:
    """Train the two-tower encoder (early-stopped on the valid window) and save it."""
    data = read_split(Path(split_uri))
    started = time.perf_counter()
    trained = train_two_tower(data, config.two_tower, "test", evaluation)
    seconds = time.perf_counter() - started
    target = Path(run_dir) / "models" / "encoder"
    with atomic_directory(target, overwrite=True) as staging:
        trained.save(staging)
    return {"uri": str(target), "epochs": trained.epochs, "training_s": round(seconds, 2)}


def evaluation_scorer(kind: str, model_uri: str, data: DataSplit) -> Scorer:
    """The held-out model of a run as a Scorer on the test stage (what evaluation scores)."""
    if kind == TWO_TOWER:
        return TwoTowerScorer(
            TrainedTwoTower.load(Path(model_uri)),
            data.tables.items,
            data.history("test"),
            data.test_cutoff,
        )
    return RecentPopularity.load(Path(model_uri))


def build_indexes(
    split_uri: str, encoder_uri: str, config: PipelineConfig, run_dir: Path
) -> dict[str, Any]:
    """Two angular Annoy indexes over the listings available at a moment: at the test
    cut-off (offline candidates) and at the end of the data (serving). The ANN recall@K
    against exact search is measured on the evaluation index with real user vectors."""
    data = read_split(Path(split_uri))
    annoy = config.model.annoy
    trained = TrainedTwoTower.load(Path(encoder_uri))
    items = data.tables.items
    moments = {
        "evaluation": data.test_cutoff,
        "serving": latest_moment(data.all_interactions(), items),
    }
    result: dict[str, Any] = {}
    for name, moment in moments.items():
        listings = items[available_at(items, moment).to_numpy()]
        vectors = trained.embed_items(listings, moment)
        started = time.perf_counter()
        index = build_annoy_index(
            vectors, listings["item_id"].astype(str).tolist(), annoy, Path(run_dir) / "index" / name
        )
        result[f"{name}_index_uri"] = str(Path(run_dir) / "index" / name)
        result[f"{name}_build_s"] = round(time.perf_counter() - started, 3)
        result[f"{name}_items"] = index.count
        if name == "evaluation":
            result.update(_index_quality(index, vectors, trained, data, annoy.recall_k, annoy))
    return result


def _index_quality(
    index: AnnIndex,
    vectors: np.ndarray,
    trained: TrainedTwoTower,
    data: DataSplit,
    k: int,
    annoy: Any,
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


def generate_candidates(
    split_uri: str,
    encoder_uri: str | None,
    evaluation_index_uri: str | None,
    config: PipelineConfig,
    run_dir: Path,
) -> dict[str, Any]:
    """Candidates for the test window's users from every configured source, merged; the
    candidate recall@N per source and combined goes to the report."""
    data = read_split(Path(split_uri))
    settings = config.model.candidates
    evaluation = config.evaluation
    history, cutoff, items = data.history("test"), data.test_cutoff, data.tables.items
    exclude_events = None if evaluation.mask_all_seen else evaluation.mask_events
    filters = CandidateFilter.from_tables(
        history, items, data.available_items(cutoff), settings, exclude_events
    )
    baselines = fit_baselines(history, evaluation.baselines, cutoff)
    item_ids = items["item_id"].astype(str).tolist()
    sources: list[CandidateSource] = []
    for name in settings.sources:
        if name == "ann":
            if encoder_uri is None or evaluation_index_uri is None:
                continue
            scorer = evaluation_scorer(TWO_TOWER, encoder_uri, data)
            index = AnnIndex.load(Path(evaluation_index_uri))
            sources.append(AnnSource(scorer.user_vectors, index, filters))  # type: ignore[attr-defined]
        elif name in ("covisitation", "popularity"):
            sources.append(ScorerSource(name, baselines[name], item_ids, filters))
        elif name == "linear":
            linear = baselines.get("ease") or baselines.get("ials")
            if linear is not None:
                sources.append(ScorerSource("linear", linear, item_ids, filters))
        elif name == "category_popularity" and items["category"].notna().any():
            sources.append(
                CategoryPopularitySource.fit(
                    history, items, baselines["popularity"], settings, filters, cutoff
                )
            )
    window = data.test
    if evaluation.positive_events is not None:
        window = window[window["event"].isin(evaluation.positive_events)]
    users = window["user_id"].drop_duplicates().astype(str).tolist()
    started = time.perf_counter()
    frames = run_sources(sources, users, settings.per_source)
    merged = merge_candidates(
        frames,
        settings.n,
        filters=filters,
        rrf_k=settings.rrf_k,
        weights=settings.source_weights,
    )
    seconds = time.perf_counter() - started
    recall = candidate_recall(merged, window, settings.n, sources=frames)
    target = Path(run_dir) / "candidates"
    with atomic_directory(target, overwrite=True) as staging:
        merged.to_parquet(staging / "test.parquet", index=False)
    return {
        "uri": str(target / "test.parquet"),
        "n": settings.n,
        "candidate_recall": {name: round(value, 4) for name, value in recall.items()},
        "users": len(users),
        "generation_s": round(seconds, 2),
    }
