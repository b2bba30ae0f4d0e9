"""The `retrain` flow: ingest -> validate -> snapshot -> split -> fit -> evaluate -> register
-> promote.

Tasks are thin wrappers over `components.pipeline.steps`; they pass URIs and content ids, never
DataFrames. A failed run writes its report with the error and never touches `champion`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from components.config import PipelineConfig, config_hash, load_config
from components.evaluation.summary import summary_markdown, summary_rows
from components.pipeline import ranking_steps, retrieval_steps, steps
from components.pipeline.report import ModelRef, RunReport
from components.registry import promotion
from components.registry.registration import (
    CHAMPION,
    download_alias_bundle,
    git_commit,
    log_and_register,
    mlflow_key,
    model_tags,
    version_aliases,
)
from components.registry.tracking import close_run, configure_mlflow, owned_run_tags
from components.settings import RewearSettings
from components.store import read_json
from flows.orchestration import (
    SOURCE_OPTIONS,
    STAGE_OPTIONS,
    UNCACHED_OPTIONS,
    open_tracking,
    show_component_progress,
    task_runner_from_settings,
)

#: Pure stages cache on their inputs' content (see flows.orchestration); a re-run resumes.
task_options: dict[str, Any] = STAGE_OPTIONS


@task(**SOURCE_OPTIONS)
def ingest_task(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    return steps.ingest(config, run_dir)


@task(**task_options)
def validate_task(raw_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    return steps.validate(raw_uri, config, run_dir)


@task(**task_options)
def snapshot_task(validated_uri: str, snapshots_root: Path) -> dict[str, Any]:
    return steps.snapshot(validated_uri, snapshots_root)


@task(**task_options)
def split_task(snapshot_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    # A test window too thin to measure fails here, before any training (steps.bundle
    # checks again before registering).
    return steps.split(snapshot_uri, config.split, run_dir, evaluated_by=config)


@task(**task_options)
def fit_task(split_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    return steps.fit(split_uri, config.model, run_dir)


@task(**task_options)
def train_encoder_task(split_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    return retrieval_steps.train_encoder(split_uri, config.model, config.evaluation, run_dir)


@task(**task_options)
def build_index_task(
    split_uri: str, encoder_uri: str, config: PipelineConfig, run_dir: Path
) -> dict[str, Any]:
    return retrieval_steps.build_indexes(split_uri, encoder_uri, config, run_dir)


@task(**task_options)
def generate_candidates_task(
    split_uri: str,
    encoder_uri: str | None,
    index_uri: str | None,
    config: PipelineConfig,
    run_dir: Path,
) -> dict[str, Any]:
    return retrieval_steps.generate_candidates(split_uri, encoder_uri, index_uri, config, run_dir)


@task(**task_options)
def build_features_task(
    split_uri: str, train_window_encoder_uri: str | None, config: PipelineConfig, run_dir: Path
) -> dict[str, Any]:
    return ranking_steps.build_ranking_data(split_uri, train_window_encoder_uri, config, run_dir)


@task(**task_options)
def train_ranker_task(features_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    return ranking_steps.train_ranker_step(features_uri, config, run_dir)


@task(**task_options)
def assemble_two_stage_task(
    split_uri: str,
    encoder_uri: str | None,
    index_uri: str | None,
    ranker_uri: str | None,
    config: PipelineConfig,
    run_dir: Path,
    purpose: Literal["evaluation", "serving"],
) -> dict[str, Any]:
    return ranking_steps.assemble_two_stage(
        split_uri, encoder_uri, index_uri, ranker_uri, config, run_dir, purpose
    )


@task(**task_options)
def evaluate_task(
    split_uri: str, model_uri: str, config: PipelineConfig, run_dir: Path
) -> dict[str, Any]:
    return steps.evaluate(split_uri, model_uri, config.evaluation, run_dir)


@task(**UNCACHED_OPTIONS)
def compare_with_champion_task(
    split_uri: str,
    model_uri: str,
    snapshot_id: str,
    config: PipelineConfig,
    run_dir: Path,
) -> dict[str, Any] | None:
    """Paired comparison with the current champion on data neither model has seen."""
    client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
    found = download_alias_bundle(
        client, config.registry.model_name, CHAMPION, run_dir / "champion"
    )
    if found is None:
        return None
    version, bundle_dir = found
    return steps.compare_with_champion(
        split_uri,
        model_uri,
        str(bundle_dir),
        version,
        snapshot_id,
        config.evaluation,
    )


@task(**UNCACHED_OPTIONS)
def register_task(
    split_uri: str,
    final_model_uri: str,
    config: PipelineConfig,
    run_dir: Path,
    run_id: str,
    tags: dict[str, str],
    encoder_uri: str | None = None,
    serving_index_uri: str | None = None,
    two_stage_uri: str | None = None,
) -> dict[str, Any]:
    settings = RewearSettings()
    client, _ = configure_mlflow(settings, config.registry.experiment)
    built = steps.bundle(
        split_uri,
        final_model_uri,
        config,
        run_dir,
        encoder_uri,
        serving_index_uri,
        two_stage_uri=two_stage_uri,
        **tags,
    )
    registered = log_and_register(
        client,
        run_id,
        Path(built["uri"]),
        config.registry.model_name,
        tags,
        example_user_id=built["example_user_id"],
    )
    return {
        "name": registered.name,
        "version": registered.version,
        "aliases": registered.aliases,
        "bundle_uri": built["uri"],
        "example_user_id": built["example_user_id"],
    }


@task(**UNCACHED_OPTIONS)
def promote_task(
    registered: dict[str, Any],
    comparison: dict[str, Any] | None,
    metrics: dict[str, float],
    config: PipelineConfig,
    force: bool = False,
) -> dict[str, Any]:
    """The promotion gate: fresh-process smoke test, decision, tags, then `champion`."""
    settings = RewearSettings()
    client, _ = configure_mlflow(settings, config.registry.experiment)
    name, version = registered["name"], registered["version"]
    decision = promotion.run_gate(
        client,
        settings.tracking_uri,
        name,
        version,
        Path(registered["bundle_uri"]),
        registered["example_user_id"],
        comparison,
        metrics,
        config.registry.promotion,
        force,
    )
    return {**decision.to_dict(), "aliases": version_aliases(client, name, version)}


@flow(name="retrain", log_prints=True, task_runner=task_runner_from_settings())
def retrain(
    config_path: str = "configs/synthetic.yaml",
    overrides: dict[str, Any] | None = None,
    force_promote: bool = False,
) -> dict[str, Any]:
    """Retrain, evaluate and register the recommender described by `config_path`; the
    promotion gate decides whether it becomes `champion` (`force_promote`: it does unless
    it fails to load and answer, recorded as `forced`)."""
    show_component_progress()
    settings = RewearSettings().ensure()
    config = load_config(config_path, overrides)
    client, experiment_id = open_tracking(settings, config.registry.experiment)
    commit = git_commit()
    resolved_hash = config_hash(config)
    mlflow_run = client.create_run(
        experiment_id,
        run_name=f"retrain-{config.name}",
        tags={
            "rewear.dataset": config.name,
            "rewear.config_hash": resolved_hash,
            "rewear.model": config.model.summary(),
            **owned_run_tags(),
        },
    )
    run_id = mlflow_run.info.run_id
    run_dir = settings.runs / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport(
        run_id=run_id,
        dataset=config.name,
        config_hash=resolved_hash,
        git_commit=commit,
        protocol=config.split.protocol,
        recommender=config.model.describe(),
        config=config.model_dump(mode="json"),
    )
    client.log_dict(run_id, report.config, "config.json")
    try:
        with _timed(report, "ingest"):
            raw = ingest_task(config, run_dir)
        with _timed(report, "validate"):
            validated = validate_task(raw["uri"], config, run_dir)
        report.validation = {k: v for k, v in validated.items() if k != "uri"}
        with _timed(report, "snapshot"):
            snap = snapshot_task(validated["uri"], settings.snapshots)
        report.snapshot_id = snap["snapshot_id"]
        with _timed(report, "split"):
            split = split_task(snap["uri"], config, run_dir)
        report.split = {k: v for k, v in split.items() if k != "uri"}
        with _timed(report, "fit"):
            fitted = fit_task(split["uri"], config, run_dir)
        encoder_uri = indexes = train_window_encoder_uri = ranker_uri = None
        if config.model.uses_two_tower:
            with _timed(report, "train_encoder"):
                encoder = train_encoder_task(split["uri"], config, run_dir)
            encoder_uri = encoder["uri"]
            train_window_encoder_uri = encoder["train_window_uri"]
            with _timed(report, "build_index"):
                indexes = build_index_task(split["uri"], encoder_uri, config, run_dir)
            report.retrieval = {
                "encoder_training_s": encoder["training_s"],
                "encoder_epochs": encoder["epochs"],
                **{k: v for k, v in indexes.items() if not k.endswith("_uri")},
            }
            _log_encoder(client, run_id, encoder["epochs"], indexes)
        index_uris = indexes or {}
        with _timed(report, "generate_candidates"):
            candidates = generate_candidates_task(
                split["uri"], encoder_uri, index_uris.get("evaluation_index_uri"), config, run_dir
            )
        report.candidate_recall = candidates["candidate_recall"]
        report.retrieval["candidates"] = {k: candidates[k] for k in ("n", "users", "generation_s")}
        if config.model.ranker.enabled:
            with _timed(report, "build_features"):
                ranking_data = build_features_task(
                    split["uri"], train_window_encoder_uri, config, run_dir
                )
            with _timed(report, "train_ranker"):
                ranker = train_ranker_task(ranking_data["uri"], config, run_dir)
            ranker_uri = ranker["uri"]
            report.ranking = {
                "label_stage": {k: v for k, v in ranking_data.items() if k != "uri"},
                **{k: v for k, v in ranker.items() if k not in ("uri", "curves")},
            }
            _log_ranker(client, run_id, ranker)
        with _timed(report, "assemble_two_stage"):
            model_uri = assemble_two_stage_task(
                split["uri"],
                encoder_uri,
                index_uris.get("evaluation_index_uri"),
                ranker_uri,
                config,
                run_dir,
                "evaluation",
            )["uri"]
            # Without the refit the registered model is the evaluated one (what
            # `rewear evaluate` can then reproduce).
            serving_two_stage = model_uri
            if config.model.refit_on_all_data:
                serving_two_stage = assemble_two_stage_task(
                    split["uri"],
                    encoder_uri,
                    index_uris.get("serving_index_uri"),
                    ranker_uri,
                    config,
                    run_dir,
                    "serving",
                )["uri"]
        with _timed(report, "evaluate"):
            evaluation = evaluate_task(split["uri"], model_uri, config, run_dir)
        report.metrics = evaluation["metrics"]
        report.valid_metrics = _best_valid(report.retrieval)
        report.baselines = evaluation["baselines"]
        report.evaluated_users = evaluation["evaluated_users"]
        report.comparisons = evaluation["comparisons"]
        report.segments = evaluation["segments"]
        report.figures = evaluation["figures"]
        with _timed(report, "compare_with_champion"):
            report.champion_comparison = compare_with_champion_task(
                split["uri"], model_uri, snap["snapshot_id"], config, run_dir
            )
        _log_metrics(client, run_id, report)
        for figure in report.figures:
            client.log_artifact(run_id, figure, "figures")
        tags = {
            "snapshot_id": snap["snapshot_id"],
            "git_commit": commit,
            "config_hash": resolved_hash,
            "dataset": config.name,
            "run_id": run_id,
            **model_tags(config.model),
            **{f"metric.{mlflow_key(k)}": f"{v:.6f}" for k, v in report.metrics.items()},
        }
        with _timed(report, "register"):
            registered = register_task(
                split["uri"],
                fitted["final_model_uri"],
                config,
                run_dir,
                run_id,
                tags,
                encoder_uri,
                None if indexes is None else indexes["serving_index_uri"],
                serving_two_stage,
            )
        report.model = ModelRef(
            name=registered["name"], version=registered["version"], aliases=registered["aliases"]
        )
        with _timed(report, "promote"):
            report.promotion = promote_task(
                registered, report.champion_comparison, report.metrics, config, force_promote
            )
        report.model.aliases = report.promotion.pop("aliases")
        report.promoted = report.promotion["promoted"]
        report.status = "completed"
    except BaseException as error:
        report.status = "failed"
        report.error = f"{type(error).__name__}: {error}"
        validation_summary = run_dir / "validation.json"
        if not report.validation and validation_summary.is_file():
            # Validation failed: its counts and quarantine files still belong in the report.
            report.validation = read_json(validation_summary)
        raise
    finally:
        # The run ends only once its report is logged: a kill before leaves it open, and
        # the next run marks it FAILED (flows.orchestration.open_tracking).
        report_path = report.write(run_dir)
        client.log_artifact(run_id, str(report_path))
        close_run(client, run_id, failed=report.status != "completed")
    publish_artifacts(report)
    return {**report.model_dump(mode="json"), "report_path": str(report_path)}


def retrain_from_file(
    config_path: str | Path, overrides: dict[str, Any] | None = None, force_promote: bool = False
) -> dict:
    """Run the flow (for the CLI and tests)."""
    return retrain(config_path=str(config_path), overrides=overrides, force_promote=force_promote)


def _log_metrics(client: Any, run_id: str, report: RunReport) -> None:
    for name, value in report.metrics.items():
        client.log_metric(run_id, f"test.{mlflow_key(name)}", value)
    for name, value in report.valid_metrics.items():
        client.log_metric(run_id, f"valid.{mlflow_key(name)}", value)
    for source, value in report.candidate_recall.items():
        client.log_metric(run_id, f"candidate_recall.{source}", value)
    for baseline, metrics in report.baselines.items():
        for name, value in metrics.items():
            client.log_metric(run_id, f"baseline.{baseline}.{mlflow_key(name)}", value)


def publish_artifacts(report: RunReport) -> None:
    """Prefect artifacts with stable keys: one markdown summary, one metrics table."""
    dumped = report.model_dump(mode="json")
    dataset = _artifact_key(report.dataset)
    create_markdown_artifact(
        key=f"rewear-retrain-summary-{dataset}",
        markdown=summary_markdown(dumped),
        description=f"rewear retrain summary ({report.dataset})",
    )
    create_table_artifact(
        key=f"rewear-retrain-metrics-{dataset}",
        table=summary_rows(report.metrics, report.baselines, report.comparisons),
        description=f"model vs baselines on the test window ({report.dataset})",
    )


def _log_encoder(
    client: Any, run_id: str, epochs: list[dict[str, Any]], indexes: dict[str, Any]
) -> None:
    """Per-epoch training curves and the index build figures."""
    for step, epoch in enumerate(epochs):
        for key, value in epoch.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                client.log_metric(run_id, f"encoder.{mlflow_key(key)}", float(value), step=step)
    for key, value in indexes.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            client.log_metric(run_id, f"index.{mlflow_key(key)}", float(value))


def _log_ranker(client: Any, run_id: str, ranker: dict[str, Any]) -> None:
    """LightGBM training curves (per boosting round), gain importances and timings."""
    for curve, values in ranker["curves"].items():
        for step, value in enumerate(values):
            client.log_metric(run_id, f"ranker.{mlflow_key(curve)}", value, step=step)
    for feature, gain in ranker["importance"].items():
        client.log_metric(run_id, f"ranker.gain.{feature}", gain)
    client.log_dict(run_id, ranker["importance"], "ranker/importance.json")
    for key in ("best_iteration", "training_s", "peak_rss_mb", "fit_rows", "ensemble_size"):
        client.log_metric(run_id, f"ranker.{key}", float(ranker[key]))


def _best_valid(retrieval: dict[str, Any]) -> dict[str, float]:
    """The early-stopping figure of the encoder (valid window, exact search)."""
    best: dict[str, float] = {}
    for epoch in retrieval.get("encoder_epochs", []):
        for key, value in epoch.items():
            if key.startswith("valid_") and isinstance(value, int | float):
                name = key.removeprefix("valid_")
                best[name] = max(best.get(name, float("-inf")), float(value))
    return best


def _artifact_key(name: str) -> str:
    """Prefect artifact keys allow lowercase letters, numbers and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


@contextmanager
def _timed(report: RunReport, stage: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        report.timings_s[stage] = round(time.perf_counter() - started, 3)
