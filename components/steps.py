"""The retrain pipeline's steps as plain functions over paths and configs.

Each step reads its inputs from the artifact store, writes its outputs atomically, and
returns a small JSON-able dict (URIs, hashes, counts), which is what the Prefect tasks in
`flows/` pass along. Callable without Prefect, from a test or a notebook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from components.config import EvaluationConfig, ModelConfig, PipelineConfig, SplitConfig
from components.data.adapters import load_source
from components.data.snapshot import read_tables, snapshot_id_of, write_snapshot, write_tables
from components.data.split import available_at, read_split, split_tables, write_split
from components.data.validation import enforce_bad_share, validate_tables
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer
from components.registry.bundle import build_bundle
from components.retrieval.popularity import RecentPopularity
from components.store import atomic_directory, read_json, write_json


def ingest(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Read the configured source into canonical tables under `run_dir/raw`."""
    tables = load_source(config.source)
    target = Path(run_dir) / "raw"
    with atomic_directory(target, overwrite=True) as staging:
        described = write_tables(tables, staging)
        write_json(staging / "source.json", tables.source)
    return {
        "uri": str(target),
        "content_id": snapshot_id_of(tables),
        "rows": {name: info["rows"] for name, info in described.items()},
    }


def validate(raw_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Quarantine bad rows to `run_dir/quarantine/*.parquet`; fail above the threshold."""
    raw = Path(raw_uri)
    tables = read_tables(raw, source=read_json(raw / "source.json"))
    result = validate_tables(tables, config.validation)
    quarantine_dir = Path(run_dir) / "quarantine"
    quarantine_files = {}
    with atomic_directory(quarantine_dir, overwrite=True) as staging:
        for name, frame in result.quarantine.items():
            if len(frame):
                frame.to_parquet(staging / f"{name}.parquet", index=False)
                quarantine_files[name] = str(quarantine_dir / f"{name}.parquet")
    summary = {**result.summary(), "quarantine_files": quarantine_files}
    write_json(Path(run_dir) / "validation.json", summary)
    enforce_bad_share(result, config.validation)
    target = Path(run_dir) / "validated"
    with atomic_directory(target, overwrite=True) as staging:
        write_tables(result.tables, staging)
        write_json(staging / "source.json", result.tables.source)
    return {"uri": str(target), **summary}


def snapshot(validated_uri: str, snapshots_root: Path) -> dict[str, Any]:
    """Content-address the validated tables (same content, same id, written once)."""
    folder = Path(validated_uri)
    tables = read_tables(folder, source=read_json(folder / "source.json"))
    written = write_snapshot(tables, snapshots_root)
    return {"snapshot_id": written.snapshot_id, "uri": str(written.path)}


def split(snapshot_uri: str, config: SplitConfig, run_dir: Path) -> dict[str, Any]:
    tables = read_tables(Path(snapshot_uri))
    target = Path(run_dir) / "split"
    summary = write_split(split_tables(tables, config), target)
    return {"uri": str(target), **summary}


def fit(split_uri: str, config: ModelConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the model twice: on the history before the test cut-off (what evaluation scores)
    and, when configured, on all the snapshot's data (what gets registered)."""
    data = read_split(Path(split_uri))
    models = Path(run_dir) / "models"
    held_out = RecentPopularity.fit(data.history("test"), config.popularity, data.test_cutoff)
    with atomic_directory(models / "evaluation", overwrite=True) as staging:
        held_out.save(staging)
    final_uri = models / "evaluation"
    if config.refit_on_all_data:
        final = RecentPopularity.fit(data.all_interactions(), config.popularity)
        with atomic_directory(models / "final", overwrite=True) as staging:
            final.save(staging)
        final_uri = models / "final"
    return {"evaluation_model_uri": str(models / "evaluation"), "final_model_uri": str(final_uri)}


def evaluate(
    split_uri: str, evaluation_model_uri: str, config: EvaluationConfig, model: ModelConfig
) -> dict[str, Any]:
    """Score the model and the popularity baseline on valid and test with the same code."""
    data = read_split(Path(split_uri))
    results: dict[str, Any] = {"metrics": {}, "valid_metrics": {}, "baselines": {}}
    for stage in ("valid", "test"):
        task = build_evaluation_task(data, stage, config)
        if stage == "test":
            scorer = RecentPopularity.load(Path(evaluation_model_uri))
        else:
            scorer = RecentPopularity.fit(
                data.history("valid"), model.popularity, data.valid_cutoff
            )
        baseline = RecentPopularity.fit(
            data.history(stage), config.baselines.popularity, data.cutoff(stage)
        )
        model_result = evaluate_scorer(scorer, task, config.ks)
        key = "metrics" if stage == "test" else "valid_metrics"
        results[key] = model_result.metrics
        if stage == "test":
            results["baselines"]["popularity"] = evaluate_scorer(baseline, task, config.ks).metrics
            results["evaluated_users"] = task.n_users
    return results


def bundle(
    split_uri: str, final_model_uri: str, config: PipelineConfig, run_dir: Path, **metadata: Any
) -> dict[str, Any]:
    """Assemble the served bundle: the model, listings unsold at the end of the data, and
    each user's masked items (never re-recommend what they bought)."""
    data = read_split(Path(split_uri))
    items = data.tables.items
    interactions = data.all_interactions()
    exclusions = interactions[interactions["event"].isin(config.evaluation.mask_events)]
    if config.evaluation.mask_all_seen:
        exclusions = interactions
    target = Path(run_dir) / "bundle"
    with atomic_directory(target, overwrite=True) as staging:
        build_bundle(
            staging,
            model=RecentPopularity.load(Path(final_model_uri)),
            items=items,
            available=available_at(items, _latest(interactions, items)),
            user_exclusions=exclusions,
            metadata={"dataset": config.name, **metadata},
        )
    return {"uri": str(target), "example_user_id": str(interactions["user_id"].iloc[-1])}


def _latest(interactions: pd.DataFrame, items: pd.DataFrame) -> pd.Timestamp | None:
    """The snapshot's 'now': the last known timestamp (None when the data has no time)."""
    candidates = [interactions["ts"].max(), items["created_at"].max(), items["sold_at"].max()]
    known = [value for value in candidates if pd.notna(value)]
    return max(known) if known else None
