"""MLflow set-up: the tracking/registry store and the experiment live under REWEAR_HOME."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from components.settings import RewearSettings


def configure_mlflow(settings: RewearSettings, experiment: str) -> tuple[MlflowClient, str]:
    """Point MLflow at the home's SQLite store; create the experiment with its artifact
    folder inside the home (MLflow's default would be ./mlruns in the working directory)."""
    settings.ensure()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return client, found.experiment_id
    experiment_id = client.create_experiment(
        experiment, artifact_location=settings.mlflow_artifacts.as_uri()
    )
    return client, experiment_id
