"""MLflow set-up: the tracking/registry store and the experiment live under REWEAR_HOME."""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.process_ownership import owner_is_gone, process_owner
from components.settings import RewearSettings


class TrackingStoreError(RuntimeError):
    """The home's registry database is gone or empty while its artifacts remain."""


def check_tracking_store(settings: RewearSettings) -> None:
    """Refuse a missing or 0-byte `mlflow.db` beside existing model artifacts: MLflow would
    silently start a new registry at version 1 beside them (and a new `champion`).
    Without artifacts an absent database is a first run; a remote tracking URI is not
    checked."""
    if settings.mlflow_tracking_uri is not None:
        return
    artifacts = settings.mlflow_artifacts
    if not artifacts.is_dir() or not any(artifacts.iterdir()):
        return
    database = settings.mlflow_db
    if database.exists() and database.stat().st_size > 0:
        elsewhere = sorted(_artifact_roots(database) - {artifacts.resolve().as_uri()})
        if elsewhere:
            raise TrackingStoreError(
                f"the MLflow registry {database} records its artifacts at {elsewhere[0]}, "
                f"outside this home ({artifacts}): the home was copied or restored from "
                "another folder, and would read (and write) the original's files. Run "
                "`rewear relocate-home` to re-root the records here"
            )
        unknown = _runs_unknown_to(database, artifacts)
        if not unknown:
            return
        state = (
            f"a registry that knows none of {len(unknown)} run(s) and model(s) whose "
            f"artifacts are there (e.g. {unknown[0]}): it was emptied and re-created (any "
            "MLflow client re-creates an emptied database)"
        )
    else:
        state = "empty (0 bytes)" if database.exists() else "missing"
    raise TrackingStoreError(
        f"the MLflow registry database {database} is {state}, but {artifacts} holds the "
        "artifacts of earlier runs: MLflow would start a new registry at version 1 beside "
        "them. Restore mlflow.db from a backup, or move mlartifacts aside to start afresh"
    )


#: Artifact folders of the home's store: a run's (its id), a logged model's (models/m-<id>).
_RUN_FOLDER = re.compile(r"[0-9a-f]{32}")
_MODEL_FOLDER = re.compile(r"m-[0-9a-f]{32}")


def _runs_unknown_to(database: Path, artifacts: Path) -> list[str]:
    """Runs and logged models with an artifact folder in `artifacts` that the database does
    not know (read-only: nothing is created or migrated)."""
    runs = [p.name for p in artifacts.iterdir() if _RUN_FOLDER.fullmatch(p.name)]
    models_dir = artifacts / "models"
    models = (
        [p.name for p in models_dir.iterdir() if _MODEL_FOLDER.fullmatch(p.name)]
        if models_dir.is_dir()
        else []
    )
    if not runs and not models:
        return []
    known: set[str] = set()
    try:
        with closing(_read_only(database)) as db:
            known.update(row[0] for row in db.execute("SELECT run_uuid FROM runs"))
            known.update(row[0] for row in db.execute("SELECT model_id FROM logged_models"))
    except sqlite3.Error:
        pass  # no such tables: a database being created knows nothing
    return sorted(name for name in (*runs, *models) if name not in known)


#: Columns of MLflow's SQLite store that hold artifact locations (absolute file:// URIs).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


def _read_only(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)


def _artifact_roots(database: Path) -> set[str]:
    """The `mlartifacts` folders the store's experiments record (rewear gives every
    experiment of a home `<home>/mlartifacts`)."""
    try:
        with closing(_read_only(database)) as db:
            rows = db.execute("SELECT artifact_location FROM experiments").fetchall()
    except sqlite3.Error:
        return set()
    return {
        location
        for (location,) in rows
        if location and location.startswith("file://") and location.endswith("/mlartifacts")
    }


def relocate_home(settings: RewearSettings) -> dict[str, int]:
    """Re-root the artifact locations a copied or restored home's store records at its
    original folder onto this home's `mlartifacts`, in one transaction; the number of
    records changed per table and column (empty: nothing recorded elsewhere)."""
    database = settings.mlflow_db
    target = settings.mlflow_artifacts.resolve().as_uri()
    changed: dict[str, int] = {}
    with closing(sqlite3.connect(database)) as db, db:
        for old in sorted(_artifact_roots(database) - {target}):
            for table, column in _LOCATION_COLUMNS:
                cursor = db.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR {column} LIKE ? ESCAPE '\\'",
                    (target, len(old) + 1, old, _like_prefix(old + "/")),
                )
                key = f"{table}.{column}"
                changed[key] = changed.get(key, 0) + cursor.rowcount
    return changed


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def use_tracking_store(settings: RewearSettings) -> None:
    """Point MLflow at the home's store for a command that only reads it (recommend,
    evaluate, serve), after `check_tracking_store`: MLflow creates a missing database the
    moment a client opens it."""
    check_tracking_store(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)


#: A logged model's URI (MLflow 3): `models:/m-<hex>`.
_LOGGED_MODEL_URI = re.compile(r"models:/(m-[0-9a-f]+)")


class RegistryClient(MlflowClient):
    """MlflowClient that names the logged model a version is registered from: a tracking
    server refuses a `models:/m-...` source without its `model_id` ("the model_id request
    parameter must identify the resource that contains the source"), which MLflow's client
    does not fill in and a SQLite store does not ask for."""

    def create_model_version(self, name: str, source: str, *args: Any, **kwargs: Any) -> Any:
        found = _LOGGED_MODEL_URI.fullmatch(source)
        if found is not None and kwargs.get("model_id") is None:
            kwargs["model_id"] = found.group(1)
        return super().create_model_version(name, source, *args, **kwargs)


def configure_mlflow(settings: RewearSettings, experiment: str) -> tuple[MlflowClient, str]:
    """Point MLflow at the home's SQLite store (or REWEAR_MLFLOW_TRACKING_URI); create the
    experiment with its artifact folder inside the home (MLflow's default would be ./mlruns
    in the working directory), or, on a tracking server, where the server keeps artifacts
    (its shared store: a folder of one worker's home would be missing on the others).
    Raises `TrackingStoreError` when the database is gone but artifacts remain."""
    check_tracking_store(settings)
    settings.ensure()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = RegistryClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, found.experiment_id
    served = settings.tracking_uri.startswith(("http://", "https://"))
    location = None if served else settings.mlflow_artifacts.as_uri()
    try:
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    except MlflowException as error:
        # Two first runs at once (two workers): the other one created it.
        found = client.get_experiment_by_name(experiment)
        if error.error_code != "RESOURCE_ALREADY_EXISTS" or found is None:
            raise
        experiment_id = found.experiment_id
    return client, experiment_id


#: Run tags that let a later process close what a killed one left open: who runs it, and
#: whether it is still open (a run is closed only after its report.json is logged).
OWNER_TAG = "rewear.owner"
STATE_TAG = "rewear.state"


def owned_run_tags() -> dict[str, str]:
    """Tags for a new run: this process owns it, and it is open."""
    return {OWNER_TAG: process_owner(), STATE_TAG: "open"}


def close_run(client: MlflowClient, run_id: str, failed: bool) -> None:
    """End a run after its report is logged: FINISHED, or FAILED."""
    client.set_tag(run_id, STATE_TAG, "closed")
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def fail_abandoned_runs(client: MlflowClient) -> list[str]:
    """Mark FAILED every open run whose owning process is gone (killed, or its machine
    rebooted), whatever MLflow's status says (a kill after MLflow closed the run while
    logging the model leaves it FINISHED without a report). Returns their run ids."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    abandoned = [
        run
        for run in client.search_runs(experiments, filter_string=f"tags.`{STATE_TAG}` = 'open'")
        if owner_is_gone(run.data.tags.get(OWNER_TAG, ""))
    ]
    for run in abandoned:
        owner = run.data.tags[OWNER_TAG]
        client.set_tag(run.info.run_id, STATE_TAG, "abandoned")
        client.set_tag(
            run.info.run_id,
            "rewear.error",
            f"the process that ran it ({owner}) ended without closing it (killed?); "
            "marked FAILED by the next rewear run",
        )
        client.set_terminated(run.info.run_id, "FAILED")
    return [run.info.run_id for run in abandoned]
