"""The retrain pipeline's steps as plain functions over paths and configs.

Each step reads its inputs from the artifact store, writes its outputs atomically, and
returns a small JSON-able dict (URIs, hashes, counts), which is what the Prefect tasks in
`flows/` pass along. Callable without Prefect, from a test or a notebook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import EvaluationConfig, ModelConfig, PipelineConfig, SplitConfig
from components.data.adapters import load_source
from components.data.snapshot import read_tables, snapshot_id_of, write_snapshot, write_tables
from components.data.split import (
    DataSplit,
    Stage,
    available_at,
    latest_moment,
    read_split,
    split_tables,
    write_split,
)
from components.data.validation import enforce_bad_share, validate_tables
from components.evaluation.figures import FIGURE_FILES, render_figures
from components.evaluation.suite import evaluate_models
from components.pipeline.ranking_steps import retrieval_only
from components.pipeline.retrieval_steps import positive_window
from components.ranking.model import TwoStageModel
from components.retrieval.collaborative import fit_baselines
from components.retrieval.popularity import RecentPopularity
from components.serving.bundle import BundleRecommender, build_bundle
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


def split(
    snapshot_uri: str,
    config: SplitConfig,
    run_dir: Path,
    *,
    evaluated_by: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Split the snapshot into `run_dir/split`. With `evaluated_by` (the pipeline that will
    be registered from it), refuse a test window too thin to measure (see
    `require_enough_test_users`) before any training."""
    tables = read_tables(Path(snapshot_uri))
    target = Path(run_dir) / "split"
    data = split_tables(tables, config)
    summary = write_split(data, target)
    if evaluated_by is not None:
        require_enough_test_users(data, evaluated_by)
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
        final = RecentPopularity.fit(data.serving_history(), config.popularity)
        with atomic_directory(models / "final", overwrite=True) as staging:
            final.save(staging)
        final_uri = models / "final"
    return {"evaluation_model_uri": str(models / "evaluation"), "final_model_uri": str(final_uri)}


def held_out_scorers(model_uri: str) -> dict[str, TwoStageModel]:
    """The run's held-out two-stage model as "model"; with a ranker also "retrieval_only"
    (its candidates in fusion order), the comparison that tells what the ranker adds."""
    two_stage = TwoStageModel.load(Path(model_uri))
    if two_stage.ranker is None:
        return {"model": two_stage}
    return {"model": two_stage, "retrieval_only": retrieval_only(two_stage)}


def evaluate(
    split_uri: str,
    evaluation_model_uri: str,
    config: EvaluationConfig,
    run_dir: Path,
) -> dict[str, Any]:
    """Score the held-out two-stage model beside every baseline on the test window with the
    same code; write per-user metrics and figures to `run_dir/evaluation`."""
    data = read_split(Path(split_uri))
    held_out = held_out_scorers(evaluation_model_uri)
    scorers = {
        **held_out,
        **fit_baselines(data.history("test"), config.baselines, data.test_cutoff),
    }
    with held_out["model"].stack.remembering_candidates():
        suite = evaluate_models("model", scorers, data, "test", config)
    target = Path(run_dir) / "evaluation"
    with atomic_directory(target, overwrite=True) as staging:
        suite.per_user_frame().to_parquet(staging / "per_user.parquet", index=False)
        render_figures(suite, staging)
    return {
        "metrics": suite.model.metrics,
        "baselines": suite.baseline_metrics(),
        "comparisons": suite.comparisons,
        "segments": suite.segments(),
        "evaluated_users": suite.n_users,
        "uri": str(target),
        "figures": [str(target / name) for name in FIGURE_FILES],
    }


def compare_with_champion(
    split_uri: str,
    evaluation_model_uri: str,
    champion_bundle_dir: str,
    champion_version: int,
    snapshot_id: str,
    config: EvaluationConfig,
) -> dict[str, Any]:
    """Challenger vs champion, paired over users, on data neither has seen.

    Temporal: the window after both the test cut-off and the champion's last training
    interaction (the champion is usually refitted on everything it had, so the challenger's
    own test window would flatter it). Fixed split: only on the champion's own snapshot.
    """
    champion = BundleRecommender.load(Path(champion_bundle_dir))
    data = read_split(Path(split_uri))
    base = {"champion_version": champion_version, "comparable": False}
    if data.protocol == "fixed":
        if champion.metadata.get("snapshot_id") != snapshot_id:
            return {**base, "reason": "the champion was trained on another fixed-split snapshot"}
    else:
        start = max(data.test_cutoff, champion.trained_until or data.test_cutoff)
        if not (data.test["ts"] >= start).any():
            return {
                **base,
                "reason": f"no interaction after the champion's training data ends ({start})",
            }
        data = data.with_test_cutoff(start)
        base["window_start"] = start.isoformat()
    scorers = {
        "challenger": held_out_scorers(evaluation_model_uri)["model"],
        "champion": champion,
    }
    suite = evaluate_models("challenger", scorers, data, "test", config)
    keys = [key for key in suite.model.metrics if key.split("@")[0] in ("recall", "ndcg")]
    return {
        **base,
        "comparable": True,
        "evaluated_users": suite.n_users,
        "challenger": {key: suite.model.metrics[key] for key in keys},
        "champion": {key: suite.baselines["champion"].metrics[key] for key in keys},
        "intervals": suite.comparisons["champion"],
    }


def bundle(
    split_uri: str,
    final_model_uri: str,
    config: PipelineConfig,
    run_dir: Path,
    encoder_uri: str | None = None,
    serving_index_uri: str | None = None,
    two_stage_uri: str | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    """Assemble the served bundle: the model, listings unsold at the end of the data, and
    each user's masked items (never re-recommend what they bought); for the two-tower
    kind also the encoder, the serving index and each user's recent history; with a ranker
    the two-stage model (retrieval stack, features, LightGBM booster) that ranks known
    users. Refuses a test window too thin to trust (`require_enough_test_users`), so that
    nothing measured on it is registered."""
    data = read_split(Path(split_uri))
    require_enough_test_users(data, config)
    items = data.tables.items
    interactions = data.serving_history()
    exclusions = interactions[interactions["event"].isin(config.evaluation.mask_events)]
    if config.evaluation.mask_all_seen:
        exclusions = interactions
    latest = latest_moment(interactions, items)
    history = None
    if encoder_uri is not None:
        length = config.model.two_tower.history_length
        history = interactions.sort_values(["user_id", "ts"], kind="stable")
        history = history.groupby("user_id", sort=False).tail(length).reset_index(drop=True)
    target = Path(run_dir) / "bundle"
    with atomic_directory(target, overwrite=True) as staging:
        build_bundle(
            staging,
            model=RecentPopularity.load(Path(final_model_uri)),
            items=items,
            available=available_at(items, latest),
            user_exclusions=exclusions,
            metadata={
                "dataset": config.name,
                "data_until": None if latest is None else latest.isoformat(),
                **metadata,
            },
            encoder_dir=None if encoder_uri is None else Path(encoder_uri),
            index_dir=None if serving_index_uri is None else Path(serving_index_uri),
            history=history,
            two_stage_dir=None if two_stage_uri is None else Path(two_stage_uri),
        )
    return {"uri": str(target), "example_user_id": str(interactions["user_id"].iloc[-1])}


class ThinTestWindowError(ValueError):
    """The test window has too few users for its metrics to mean anything."""


def require_enough_test_users(data: DataSplit, config: PipelineConfig) -> int:
    """The number of users the evaluation scores (a positive event in the test window);
    fewer than `registry.promotion.min_users` raises: a model measured on a handful of
    users (say, rows dated after the real data) must not be registered, let alone promoted
    as a first version with no champion to compare with."""
    users = int(positive_window(data.test, config.evaluation)["user_id"].nunique())
    minimum = config.registry.promotion.min_users
    if users < minimum:
        where = "the fixed split's test file"
        if data.test_cutoff is not None:
            where = f"the test window from {data.test_cutoff} to {data.test['ts'].max()}"
        raise ThinTestWindowError(
            f"{where} holds {users} user(s) with a positive interaction, fewer than "
            f"registry.promotion.min_users={minimum}: metrics on so few users are noise, so "
            "nothing is registered. Lengthen split.test_duration (or split.test_fraction), "
            "check the newest timestamps of the data, or lower registry.promotion.min_users"
        )
    return users


class LeakageError(ValueError):
    """The model saw the window it would be evaluated on."""


def evaluate_registered(
    recommender: BundleRecommender,
    tables_root: Path,
    config: PipelineConfig,
    stage: Stage = "test",
) -> dict[str, Any]:
    """Score a registered bundle on a snapshot's split, beside freshly fitted baselines.

    Refuses when the bundle was trained on data at or after the stage's cut-off: its
    metrics would be measured on its own training data.
    """
    tables = read_tables(Path(tables_root))
    data = split_tables(tables, config.split)
    cutoff = data.cutoff(stage)
    trained_until = recommender.trained_until
    if cutoff is not None and trained_until is not None and trained_until > cutoff:
        raise LeakageError(
            f"this model was trained on interactions up to {trained_until}, after the "
            f"{stage} cut-off {cutoff} of this snapshot: it would be scored on its own "
            "training data. Evaluate it on a newer snapshot, or register models with "
            "model.refit_on_all_data: false to score them on their own snapshot."
        )
    scorers = {
        "model": recommender,
        **fit_baselines(data.history(stage), config.evaluation.baselines, cutoff),
    }
    suite = evaluate_models("model", scorers, data, stage, config.evaluation)
    return {
        "metrics": suite.model.metrics,
        "baselines": suite.baseline_metrics(),
        "comparisons": suite.comparisons,
        "segments": suite.segments(),
        "evaluated_users": suite.n_users,
        "split": data.summary(),
    }
