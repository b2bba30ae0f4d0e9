"""From a registered version back to what made it: run, config, code, data snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient

from components.data.snapshot import Snapshot, load_snapshot_manifest
from components.registry.registration import PARENT_RUN_TAG

LINEAGE_TAGS = ("snapshot_id", "git_commit", "config_hash", "dataset", PARENT_RUN_TAG)


class LineageError(ValueError):
    """A version's lineage is incomplete or inconsistent; the message says which link."""


@dataclass(frozen=True)
class Lineage:
    model_name: str
    version: int
    run_id: str
    run_status: str
    config_hash: str
    git_commit: str
    dataset: str
    snapshot: Snapshot
    #: Headline test metrics recorded on the version (`metric.*` tags).
    metrics: dict[str, float]


def walk_lineage(
    client: MlflowClient, model_name: str, alias: str, snapshots_root: Path
) -> Lineage:
    """Follow `models:/model_name@alias` to its parent run and its data snapshot, checking
    each link (the run exists and carries the same config hash; the snapshot's manifest
    is on disk under `snapshots_root` with the id the version names)."""
    version = client.get_model_version_by_alias(model_name, alias)
    tags = version.tags
    missing = [tag for tag in LINEAGE_TAGS if not tags.get(tag)]
    if missing:
        raise LineageError(f"{model_name} v{version.version} has no {missing} tags")
    run_id = tags[PARENT_RUN_TAG]
    if version.run_id != run_id:
        raise LineageError(
            f"{model_name} v{version.version} was logged by run {version.run_id} but its "
            f"{PARENT_RUN_TAG} tag says {run_id}"
        )
    run = client.get_run(run_id)
    if run.data.tags.get("rewear.config_hash") != tags["config_hash"]:
        raise LineageError(
            f"run {run_id} has config hash {run.data.tags.get('rewear.config_hash')}, the "
            f"version {tags['config_hash']}"
        )
    snapshot = load_snapshot_manifest(Path(snapshots_root) / tags["snapshot_id"])
    if snapshot.snapshot_id != tags["snapshot_id"]:
        raise LineageError(
            f"snapshot folder {snapshot.path} holds {snapshot.snapshot_id}, the version names "
            f"{tags['snapshot_id']}"
        )
    return Lineage(
        model_name=model_name,
        version=int(version.version),
        run_id=run_id,
        run_status=run.info.status,
        config_hash=tags["config_hash"],
        git_commit=tags["git_commit"],
        dataset=tags["dataset"],
        snapshot=snapshot,
        metrics={
            key.removeprefix("metric."): float(value)
            for key, value in tags.items()
            if key.startswith("metric.")
        },
    )
