"""The `monitor` flow: drift of the newest data against what the champion learned from, the
champion's quality on the data it has not seen, and its served candidate recall.

Drift and quality run as two submitted tasks (in parallel on the configured task runner).
When a threshold is crossed the flow emits the Prefect event `rewear.monitor.alert`
(resource `rewear.model.<name>`; an automation can trigger the `retrain` deployment on it,
see prefect.yaml) and fails with a message listing every breach; otherwise it emits
`rewear.monitor.ok`. Each run logs its figures to MLflow and writes `report.json` in its
run folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.events import emit_event

from components.config import PipelineConfig
from components.data.schema import CanonicalTables
from components.data.snapshot import read_tables
from components.monitoring import (
    MonitoringAlertError,
    MonitoringConfig,
    champion_quality,
    drift_report,
    threshold_breaches,
)
from components.registry.bundle import BundleRecommender
from components.registry.registration import mlflow_key
from components.store import read_json
from flows.orchestration import (
    STAGE_CACHE,
    STAGE_OPTIONS,
    finish_tracked_run,
    start_tracked_run,
    task_runner_from_settings,
)
from flows.refresh_index import fetch_champion_task
from flows.retrain import ingest_task, validate_task

ALERT_EVENT = "rewear.monitor.alert"
OK_EVENT = "rewear.monitor.ok"


def _tables(validated_uri: str) -> CanonicalTables:
    folder = Path(validated_uri)
    return read_tables(folder, source=read_json(folder / "source.json"))


@task(**STAGE_OPTIONS)
def drift_task(validated_uri: str, since: str, thresholds: MonitoringConfig) -> dict[str, Any]:
    return drift_report(_tables(validated_uri), pd.Timestamp(since), thresholds)


@task(**{**STAGE_OPTIONS, "cache_policy": STAGE_CACHE - "champion_dir"})
def quality_task(
    bundle_content: str,
    champion_dir: str,
    validated_uri: str,
    since: str,
    thresholds: MonitoringConfig,
    config: PipelineConfig,
) -> dict[str, Any]:
    """`bundle_content` (the version number and its data end) keys the cache, not the
    per-run download folder."""
    recommender = BundleRecommender.load(Path(champion_dir))
    return champion_quality(
        recommender, _tables(validated_uri), pd.Timestamp(since), thresholds, config.evaluation
    )


@flow(name="monitor", log_prints=True, task_runner=task_runner_from_settings())
def monitor(
    config_path: str = "configs/synthetic.yaml",
    overrides: dict[str, Any] | None = None,
    thresholds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Check drift and the champion's quality on the newest data; fail loudly on a breach."""
    started = time.perf_counter()
    limits = MonitoringConfig.model_validate(thresholds or {})
    run = start_tracked_run("monitor", config_path, overrides)
    config, client, run_id, run_dir = run.config, run.client, run.run_id, run.run_dir
    report: dict[str, Any] = {"run_id": run_id, "kind": "monitor", "status": "failed"}
    name = config.registry.model_name
    failed = True
    try:
        champion = fetch_champion_task(config, run_dir)
        metadata = read_json(Path(champion["bundle_dir"]) / "bundle.json")
        if metadata.get("data_until") is None:
            raise ValueError(
                "the champion's data had no timestamps: monitoring compares time windows; "
                "it applies to temporal sources only"
            )
        since = str(metadata["data_until"])
        raw = ingest_task(config, run_dir)
        validated = validate_task(raw["uri"], config, run_dir)
        drift_future = drift_task.submit(validated["uri"], since, limits)
        quality_future = quality_task.submit(
            f"{name}/{champion['version']}/{since}",
            champion["bundle_dir"],
            validated["uri"],
            since,
            limits,
            config,
        )
        drift, quality = drift_future.result(), quality_future.result()
        registered = champion["tags"].get(f"metric.recall_at_{limits.recall_k}")
        breaches = threshold_breaches(
            drift, quality, limits, None if registered is None else float(registered)
        )
        report.update(
            champion_version=champion["version"],
            champion_data_until=since,
            drift=drift,
            quality=quality,
            thresholds=limits.model_dump(mode="json"),
            breaches=breaches,
            status="alert" if breaches else "ok",
        )
        _log(client, run_id, drift, quality)
        payload = {
            "breaches": breaches,
            "psi": drift["psi"],
            "metrics": quality["metrics"],
            "candidate_recall": quality["candidate_recall"],
            "champion_version": champion["version"],
            "mlflow_run_id": run_id,
        }
        event = emit_event(
            event=ALERT_EVENT if breaches else OK_EVENT,
            resource={"prefect.resource.id": f"rewear.model.{name}", "prefect.resource.name": name},
            payload=payload,
        )
        report["event_id"] = None if event is None else str(event.id)
        if breaches:
            raise MonitoringAlertError(
                f"monitoring of {name} v{champion['version']} crossed {len(breaches)} "
                "threshold(s): " + "; ".join(breaches) + f". Event {ALERT_EVENT} emitted; "
                "retrain (prefect deployment run 'retrain/daily') or adjust `thresholds`."
            )
        failed = False
    except BaseException as error:
        report.setdefault("error", f"{type(error).__name__}: {error}")
        raise
    finally:
        report["duration_s"] = round(time.perf_counter() - started, 3)
        finish_tracked_run(run, report, failed)
    return report


def _log(client: Any, run_id: str, drift: dict[str, Any], quality: dict[str, Any]) -> None:
    for feature, value in drift["psi"].items():
        client.log_metric(run_id, f"drift.psi.{feature}", float(value))
    for key, value in quality["metrics"].items():
        client.log_metric(run_id, f"champion.{mlflow_key(key)}", float(value))
    if quality["candidate_recall"] is not None:
        client.log_metric(run_id, "champion.candidate_recall", float(quality["candidate_recall"]))
    client.log_metric(run_id, "champion.evaluated_users", float(quality["evaluated_users"]))
