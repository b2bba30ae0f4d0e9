"""Loading from the registry: only checksummed bundles, never an MLflow model's own code or
pickles; a registry database that vanished beside its artifacts is refused."""

from __future__ import annotations

import shutil
import subprocess
import sys

import mlflow
import pytest

from components.registry.registration import (
    CHAMPION,
    download_alias_bundle,
    load_bundle,
)
from components.registry.tracking import (
    TrackingStoreError,
    check_tracking_store,
    configure_mlflow,
)
from components.serving.bundle import BundleError
from components.settings import RewearSettings


def test_a_pickled_mlflow_model_folder_is_refused_without_running_its_code(planted_model, tmp_path):
    with pytest.raises(BundleError, match="is not a rewear bundle"):
        load_bundle(str(planted_model.folder), tmp_path / "scratch")
    assert not planted_model.marker.exists()
    # The folder is hostile indeed: MLflow's own loader runs its pickle.
    with pytest.raises(Exception):  # noqa: B017 - the planted pickle returns no model
        mlflow.pyfunc.load_model(str(planted_model.folder))
    assert planted_model.marker.exists()


def test_registered_versions_and_bundle_folders_load_as_bundles(tiny_champion, tmp_path):
    mlflow.set_tracking_uri(tiny_champion)
    by_alias = load_bundle("models:/rewear@champion", tmp_path / "a")
    by_folder = load_bundle(str(tmp_path / "bundle"), tmp_path / "b")
    logged = mlflow.artifacts.download_artifacts("models:/rewear/1", dst_path=str(tmp_path / "m"))
    by_model_folder = load_bundle(logged, tmp_path / "c")
    for recommender in (by_alias, by_folder, by_model_folder):
        assert recommender.recommend(["never-seen"], k=2)["item_id"].tolist() == ["i5", "i1"]


def test_a_corrupt_registered_bundle_is_refused_at_download(rewear_home, tiny_champion, tmp_path):
    mlflow.set_tracking_uri(tiny_champion)
    stored = next((rewear_home / "mlartifacts").rglob("artifacts/bundle/items.parquet"))
    stored.write_bytes(stored.read_bytes()[:100])
    client, _ = configure_mlflow(RewearSettings(home=rewear_home), "rewear")
    with pytest.raises(BundleError, match=r"items\.parquet is truncated: 100 bytes"):
        download_alias_bundle(client, "rewear", CHAMPION, tmp_path / "download")
    with pytest.raises(BundleError, match=r"items\.parquet is truncated"):
        load_bundle("models:/rewear@champion", tmp_path / "scratch")


@pytest.mark.parametrize("state", ["missing", "empty (0 bytes)", "a registry that knows none"])
@pytest.mark.usefixtures("tiny_champion")
def test_a_lost_registry_database_beside_artifacts_is_refused(rewear_home, tmp_path, state):
    """Emptied beside its artifacts, then re-created by any MLflow client (`rewear
    recommend` did it): the database has tables again, so its size passed the guard and a
    retrain registered a new v1 as champion beside the old artifacts."""
    database = rewear_home / "mlflow.db"
    database.unlink()
    if state == "empty (0 bytes)":
        database.touch()
    if state.startswith("a registry"):
        # Another process, as a user's would be (this one keeps the old file's store open).
        recreate = f"from mlflow import MlflowClient; MlflowClient('sqlite:///{database}')"
        subprocess.run([sys.executable, "-c", recreate + ".search_experiments()"], check=True)
        assert database.stat().st_size > 0
    settings = RewearSettings(home=rewear_home)
    with pytest.raises(TrackingStoreError) as raised:
        configure_mlflow(settings, "rewear")
    message = str(raised.value)
    assert f"{database} is {state}" in message and "Restore mlflow.db from a backup" in message
    assert database.exists() == (state != "missing")  # nothing created or migrated
    # With the artifacts moved aside, as the message says, the home is accepted again.
    shutil.move(rewear_home / "mlartifacts", tmp_path / "old-artifacts")
    check_tracking_store(settings)
