"""The `refresh_index` flow: the champion's index and serving tables rebuilt from the newest
data, published as a new registered version, without retraining.

ingest -> validate (cached like retrain's) -> fetch champion -> refresh bundle (embed the
listings available now with the champion's item tower, drop sold ones, rebuild the Annoy
index; a two-stage model's candidate stack and feature tables rebuilt around its unchanged
ranker; every other bundle file copied) -> register a new version (tags: same encoder and
ranker as the source version) -> the promotion gate with the refresh's rule (answers on
sale, a fresh-process smoke test, the latency bound; the same tagging and alias code as the
retrain's) -> `champion` moves if it still is the version that was refreshed. A failure
anywhere leaves `champion` where it was.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from prefect import flow, task

from components.config import PipelineConfig
from components.data.snapshot import read_tables
from components.pipeline import chain
from components.pipeline.refresh import (
    SmokeTestError,
    answer_problems,
    refresh_bundle,
    register_refreshed_version,
)
from components.registry import champion_alias, promotion, promotion_smoke
from components.registry.registration import (
    CHAMPION,
    current_alias_version,
    download_alias_bundle,
    git_commit,
    model_uri,
)
from components.registry.tracking import configure_mlflow
from components.settings import RewearSettings
from components.store import read_json
from flows.stage_tasks import prefect_stages
from flows.task_options import UNCACHED_OPTIONS
from flows.task_runners import task_runner_from_settings
from flows.tracked_run import finish_tracked_run, start_tracked_run

#: Version tags copied from the refreshed version: what made its model.
LINEAGE_TAGS = ("snapshot_id", "git_commit", "config_hash", "dataset", "run_id")


class NoChampionError(RuntimeError):
    """There is nothing to refresh yet."""


@task(**UNCACHED_OPTIONS)
def fetch_champion_task(config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Download the current champion's bundle and read its version's tags."""
    client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
    name = config.registry.model_name
    found = download_alias_bundle(client, name, CHAMPION, run_dir / "champion")
    if found is None:
        raise NoChampionError(
            f"model {name!r} has no {CHAMPION!r} version yet: run the retrain flow "
            "first (prefect deployment run 'retrain/daily' or `rewear retrain`)"
        )
    version, bundle_dir = found
    tags = dict(client.get_model_version(name, str(version)).tags)
    return {"version": version, "bundle_dir": str(bundle_dir), "tags": tags}


@task(**UNCACHED_OPTIONS)
def refresh_bundle_task(
    champion_dir: str, validated_uri: str, config: PipelineConfig, run_dir: Path, version: int
) -> dict[str, Any]:
    folder = Path(validated_uri)
    tables = read_tables(folder, source=read_json(folder / "source.json"))
    result = refresh_bundle(
        Path(champion_dir),
        tables,
        run_dir / "bundle",
        config.evaluation,
        extra_metadata={"refreshed_from_version": version},
    )
    result["uri"] = str(run_dir / "bundle")
    if result["changed"]:
        items = tables.items
        result["example_user_id"] = str(tables.interactions["user_id"].iloc[-1])
        available = _available_ids(run_dir / "bundle")
        result["unavailable_ids"] = sorted(set(items["item_id"].astype(str)) - available)
        result["smoke_users"] = _smoke_users(tables.interactions)
    return result


def _available_ids(bundle_dir: Path) -> set[str]:
    catalogue = pd.read_parquet(bundle_dir / "items.parquet", columns=["item_id", "available"])
    return set(catalogue.loc[catalogue["available"], "item_id"].astype(str))


def _smoke_users(interactions: Any) -> list[str]:
    """The three most active users and one never seen (the popularity fallback)."""
    active = interactions["user_id"].astype(str).value_counts().index[:3].tolist()
    return [*active, "rewear-smoke-test-unknown-user"]


@task(**UNCACHED_OPTIONS)
def register_and_promote_task(
    refreshed: dict[str, Any],
    champion: dict[str, Any],
    config: PipelineConfig,
    run_id: str,
) -> dict[str, Any]:
    """Register the refreshed bundle and publish it through the promotion gate with the
    refresh's rule (`promotion.decide_refresh`: answers on sale in this process, loads and
    answers in a fresh one within the latency bound); `champion` moves to it when it is
    still the version that was refreshed (a retrain may have promoted another meanwhile:
    then the refreshed version stays registered, unaliased, tagged with the decision)."""
    settings = RewearSettings()
    client, _ = configure_mlflow(settings, config.registry.experiment)
    name = config.registry.model_name
    source_version = champion["version"]
    lineage = {k: champion["tags"][k] for k in LINEAGE_TAGS if k in champion["tags"]}
    metric_tags = {k: v for k, v in champion["tags"].items() if k.startswith("metric.")}
    tags = {
        **lineage,
        **metric_tags,
        "kind": "index_refresh",
        "refreshed_from_version": str(source_version),
        "encoder_from_version": str(champion["tags"].get("encoder_from_version", source_version)),
        "ranker_from_version": str(champion["tags"].get("ranker_from_version", source_version)),
        "same_encoder": "true",
        "same_ranker": "true",
        "encoder_sha256": str(refreshed["encoder_sha256"]),
        "index_data_until": str(refreshed["data_until"]),
        "new_listings": str(refreshed["new_listings"]),
        "dropped_listings": str(refreshed["dropped_listings"]),
        "refresh_run_id": run_id,
        "refresh_git_commit": git_commit(),
    }
    version = register_refreshed_version(
        client, run_id, Path(refreshed["uri"]), name, tags, refreshed["example_user_id"]
    )
    gate = config.registry.promotion
    mlflow.set_tracking_uri(settings.tracking_uri)
    model = mlflow.pyfunc.load_model(model_uri(name, version=version))
    problems = answer_problems(model, refreshed["smoke_users"], set(refreshed["unavailable_ids"]))
    smoke = promotion_smoke.fresh_smoke(
        settings.tracking_uri,
        name,
        version,
        Path(refreshed["uri"]),
        refreshed["example_user_id"],
        gate,
    )
    verdict = promotion.decide_refresh(source_version, smoke, problems, gate)
    # The retrain's publish path with the refresh's own rule: tags, then `champion` moves
    # only if it is still the version that was refreshed.
    current = current_alias_version(client, name, CHAMPION)
    decision = champion_alias.apply_decision(
        client, name, version, verdict, gate.metric, locks=RewearSettings().locks
    )
    failed = verdict.reasons
    client.set_model_version_tag(name, str(version), "smoke_test", "failed" if failed else "passed")
    if failed:
        raise SmokeTestError("refreshed version failed its smoke test: " + "; ".join(failed))
    aliases = sorted(client.get_model_version(name, str(version)).aliases)
    return {
        "version": version,
        "aliases": aliases,
        "promoted": decision.promote,
        "champion_before": current,
        "smoke_test": {"problems": problems, "p50_ms": smoke.p50_ms, "p99_ms": smoke.p99_ms},
        "decision": decision.to_dict(),
    }


@flow(name="refresh-index", log_prints=True, task_runner=task_runner_from_settings())
def refresh_index(
    config_path: str = "configs/synthetic.yaml", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Refresh the champion's index and serving tables from the newest data and publish it."""
    started = time.perf_counter()
    run = start_tracked_run("refresh-index", config_path, overrides)
    config, client, run_id, run_dir = run.config, run.client, run.run_id, run.run_dir
    report: dict[str, Any] = {"run_id": run_id, "kind": "refresh_index", "status": "failed"}
    failed = True
    try:
        champion = fetch_champion_task(config, run_dir)
        report["source_version"] = champion["version"]
        # The refresh run is the new version's parent run: it carries the model's config
        # hash and names the training run, so lineage walks through it to the snapshot.
        for key, tag in (("rewear.config_hash", "config_hash"), ("rewear.training_run", "run_id")):
            if tag in champion["tags"]:
                client.set_tag(run_id, key, champion["tags"][tag])
        validated = chain.validated_source(config, run_dir, prefect_stages())
        refreshed = refresh_bundle_task(
            champion["bundle_dir"], validated["uri"], config, run_dir, champion["version"]
        )
        report["refresh"] = {
            k: v
            for k, v in refreshed.items()
            if k not in ("unavailable_ids", "smoke_users", "example_user_id")
        }
        if not refreshed["changed"]:
            print(f"no data newer than the champion's ({refreshed['built_until']}): nothing to do")
            report.update(status="unchanged", promoted=False, version=None)
        else:
            for key in ("new_listings", "dropped_listings", "available_listings", "refresh_s"):
                client.log_metric(run_id, f"refresh.{key}", float(refreshed[key]))
            registered = register_and_promote_task(refreshed, champion, config, run_id)
            report.update(status="completed", **registered)
        failed = False
    except BaseException as error:
        report["error"] = f"{type(error).__name__}: {error}"
        raise
    finally:
        report["duration_s"] = round(time.perf_counter() - started, 3)
        finish_tracked_run(run, report, failed)
    return report
