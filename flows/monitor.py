"""The `monitor` flow: drift of the newest data against what the champion learned from, the
champion's quality on the data it has not seen, and its served candidate recall.

Drift compares the newest `window` of interactions with a `window` of the champion's
training data ending at its training cut-off (which an index refresh does not move: for a
refreshed champion it is the cut-off of the retrained version it came from). Drift and
quality run as two submitted tasks (in parallel on the configured task runner). When a
threshold is crossed the flow emits the Prefect event `rewear.monitor.alert` (resource
`rewear.model.<name>`; an automation can trigger the `retrain` deployment on it, see
prefect.yaml) and fails with a message listing every breach. When a check has too little
data it neither passes nor alerts: the run ends with status `insufficient_data`, says which
window holds how much against which minimum, and emits `rewear.monitor.insufficient_data`
(no retrain). Otherwise it emits `rewear.monitor.ok`. Each run logs its figures to MLflow
and writes `report.json` in its run folder.
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
from components.pipeline import chain
from components.pipeline.monitoring import (
    MonitoringAlertError,
    MonitoringConfig,
    champion_quality,
    drift_report,
    monitor_status,
    threshold_breaches,
)
from components.registry.registration import mlflow_key
from components.serving.recommender import BundleRecommender
from components.store import read_json
from flows.refresh_index import fetch_champion_task
from flows.stage_tasks import prefect_stages
from flows.task_options import STAGE_CACHE, STAGE_OPTIONS, UNCACHED_OPTIONS
from flows.task_runners import task_runner_from_settings
from flows.tracked_run import finish_tracked_run, start_tracked_run

ALERT_EVENT = "rewear.monitor.alert"
OK_EVENT = "rewear.monitor.ok"
INSUFFICIENT_EVENT = "rewear.monitor.insufficient_data"
EVENTS = {"alert": ALERT_EVENT, "ok": OK_EVENT, "insufficient_data": INSUFFICIENT_EVENT}


def _tables(validated_uri: str) -> CanonicalTables:
    folder = Path(validated_uri)
    return read_tables(folder, source=read_json(folder / "source.json"))


@task(**UNCACHED_OPTIONS)
def training_cutoff_task(champion: dict[str, Any]) -> dict[str, Any]:
    """The champion's training cut-off and where it was read: a retrained bundle's
    `data_until`; an index refresh moves `data_until` to the newest data and records the
    cut-off of what was trained as `trained_until`, carried through every refresh. A bundle
    refreshed before `trained_until` was recorded: the data end the refresh started from."""
    metadata = read_json(Path(champion["bundle_dir"]) / "bundle.json")
    if metadata.get("data_until") is None:
        raise ValueError(
            "the champion's data had no timestamps: monitoring compares time windows; "
            "it applies to temporal sources only"
        )
    data_until = str(metadata["data_until"])
    found = {"data_until": data_until, "trained_until": data_until, "from": "its data_until"}
    if metadata.get("trained_until") is not None:
        return {**found, "trained_until": str(metadata["trained_until"]), "from": "its bundle"}
    if metadata.get("refreshed_from_data_until") is not None:
        until = str(metadata["refreshed_from_data_until"])
        return {**found, "trained_until": until, "from": "refreshed_from_data_until"}
    return found


@task(**STAGE_OPTIONS)
def drift_task(
    validated_uri: str, trained_until: str, thresholds: MonitoringConfig
) -> dict[str, Any]:
    return drift_report(_tables(validated_uri), pd.Timestamp(trained_until), thresholds)


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
        cutoff = training_cutoff_task(champion)
        since = cutoff["data_until"]
        validated = chain.validated_source(config, run_dir, prefect_stages())
        drift_future = drift_task.submit(validated["uri"], cutoff["trained_until"], limits)
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
        status, summary = monitor_status(drift, quality, breaches)
        report.update(
            champion_version=champion["version"],
            champion_data_until=since,
            champion_trained_until=cutoff["trained_until"],
            champion_trained_until_from=cutoff["from"],
            drift=drift,
            quality=quality,
            thresholds=limits.model_dump(mode="json"),
            breaches=breaches,
            status=status,
            summary=summary,
        )
        _log(client, run_id, drift, quality)
        report["event_id"] = _emit_status_event(name, report, run_id)
        _alert_on_breaches(name, champion["version"], status, summary, breaches)
        failed = False
    except BaseException as error:
        report.setdefault("error", f"{type(error).__name__}: {error}")
        raise
    finally:
        report["duration_s"] = round(time.perf_counter() - started, 3)
        finish_tracked_run(run, report, failed)
    return report


def _emit_status_event(name: str, report: dict[str, Any], run_id: str) -> str | None:
    """Emit the run's Prefect event (`rewear.monitor.<status>`, on the model's resource)
    with its figures; the event's id (None when no event was recorded)."""
    drift, quality = report["drift"], report["quality"]
    payload = {
        "status": report["status"],
        "summary": report["summary"],
        "breaches": report["breaches"],
        "psi": drift["psi"],
        "metrics": quality["metrics"],
        "candidate_recall": quality["candidate_recall"],
        "champion_version": report["champion_version"],
        "mlflow_run_id": run_id,
    }
    event = emit_event(
        event=EVENTS[report["status"]],
        resource={"prefect.resource.id": f"rewear.model.{name}", "prefect.resource.name": name},
        payload=payload,
    )
    return None if event is None else str(event.id)


def _alert_on_breaches(
    name: str, version: int, status: str, summary: str, breaches: list[str]
) -> None:
    """Fail the run listing every breach; say what to do when there was too little data."""
    if breaches:
        raise MonitoringAlertError(
            f"monitoring of {name} v{version} crossed {len(breaches)} "
            "threshold(s): " + "; ".join(breaches) + f". Event {ALERT_EVENT} emitted; "
            "retrain (prefect deployment run 'retrain/daily') or adjust `thresholds`."
        )
    if status == "insufficient_data":
        print(
            f"monitoring of {name} v{version}: {summary}. Neither a pass nor "
            "an alert; run the monitor again when more data has arrived, or lower "
            "`thresholds` min_rows / min_users."
        )


def _log(client: Any, run_id: str, drift: dict[str, Any], quality: dict[str, Any]) -> None:
    for feature, value in drift["psi"].items():
        client.log_metric(run_id, f"drift.psi.{feature}", float(value))
    for key in ("reference_rows", "current_rows", "current_rows_after_training"):
        client.log_metric(run_id, f"drift.{key}", float(drift[key]))
    enough = drift["enough_data"] and quality["enough_data"]
    client.set_tag(run_id, "rewear.monitor.enough_data", str(enough).lower())
    for key, value in quality["metrics"].items():
        client.log_metric(run_id, f"champion.{mlflow_key(key)}", float(value))
    if quality["candidate_recall"] is not None:
        client.log_metric(run_id, "champion.candidate_recall", float(quality["candidate_recall"]))
    client.log_metric(run_id, "champion.evaluated_users", float(quality["evaluated_users"]))
