"""The experiment model in the registry: `<model>-experiment`, one version per experiment,
alias `live` on the one being served, its spec and state on the version's tags.

The arms' bundles are copied into the experiment model when it starts, so the experiment
serves exactly the two versions it pinned whatever happens to `champion` and `challenger`
meanwhile; the version tags (`experiment.*`) say which, and whether it is still live.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from components.registry.registration import (
    COMPONENTS_DIR,
    PARENT_RUN_TAG,
    current_alias_version,
    ensure_registered_model,
    log_served_model,
    model_uri,
)
from components.serving.bundle import verify_bundle
from components.serving.experiment import ARMS, ExperimentSpec
from components.serving.experiment_pyfunc import EXPERIMENT_ARTIFACT, experiment_signature
from components.serving.pyfunc import BUNDLE_ARTIFACT

EXPERIMENT_MODEL_CODE = COMPONENTS_DIR / "serving" / "experiment_pyfunc_model.py"
LIVE = "live"
STATUS_TAG = "experiment.status"
LIVE_STATUS = "live"
ENDED_STATUS = "ended"


class ExperimentStateError(RuntimeError):
    """The registry's experiments are not in the state the command needs."""


def experiment_model_name(model_name: str) -> str:
    return f"{model_name}-experiment"


def fetch_version_bundle(model_name: str, version: int, destination: Path) -> Path:
    """Download version `version`'s bundle folder, checked against its manifest."""
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=model_uri(model_name, version=version), dst_path=str(destination)
    )
    bundle = Path(local) / "artifacts" / BUNDLE_ARTIFACT
    verify_bundle(bundle)
    return bundle


def build_experiment_folder(spec: ExperimentSpec, scratch: Path) -> Path:
    """`experiment.json` and one bundle per arm, copied from the pinned versions."""
    folder = scratch / EXPERIMENT_ARTIFACT
    folder.mkdir(parents=True)
    spec.write(folder)
    for arm in ARMS:
        bundle = fetch_version_bundle(
            spec.model_name, spec.version(arm), scratch / f"{arm}-download"
        )
        shutil.copytree(bundle, folder / arm)
    return folder


def live_experiment(client: MlflowClient, model_name: str) -> tuple[int, ExperimentSpec] | None:
    """The live experiment's version and spec (None when none is live)."""
    name = experiment_model_name(model_name)
    version = current_alias_version(client, name, LIVE)
    if version is None:
        return None
    tags = client.get_model_version(name, str(version)).tags
    if tags.get(STATUS_TAG) != LIVE_STATUS:
        return None
    return version, spec_from_tags(tags)


def spec_from_tags(tags: dict[str, str]) -> ExperimentSpec:
    fields = ExperimentSpec.__dataclass_fields__
    values: dict[str, object] = {
        key: tags[f"experiment.{key}"] for key in fields if f"experiment.{key}" in tags
    }
    for key in ("control_version", "treatment_version", "exploration_top_m"):
        if key in values:
            values[key] = int(str(values[key]))
    for key in ("treatment_share", "exploration_temperature"):
        if key in values:
            values[key] = float(str(values[key]))
    return ExperimentSpec(**values)


def register_experiment(
    client: MlflowClient, run_id: str, spec: ExperimentSpec, scratch: Path
) -> int:
    """Log the experiment model under `run_id`, register it as a new version of
    `<model>-experiment` with the spec on its tags, and point `live` at it. Refuses while
    another experiment of the model is live (one experiment at a time shares the traffic)."""
    name = experiment_model_name(spec.model_name)
    running = live_experiment(client, spec.model_name)
    if running is not None:
        raise ExperimentStateError(
            f"experiment {running[1].experiment_id} (models:/{name}/{running[0]}) is still "
            "live: read it out to its decision (`rewear experiment readout`) before starting "
            "another"
        )
    folder = build_experiment_folder(spec, scratch)
    source = log_served_model(
        run_id, EXPERIMENT_MODEL_CODE, {EXPERIMENT_ARTIFACT: str(folder)}, experiment_signature()
    )
    ensure_registered_model(client, name)
    tags = {f"experiment.{key}": str(value) for key, value in asdict(spec).items()}
    created = client.create_model_version(
        name,
        source=source,
        run_id=run_id,
        tags={**tags, STATUS_TAG: LIVE_STATUS, PARENT_RUN_TAG: run_id},
        await_creation_for=60,
    )
    version = int(created.version)
    client.set_registered_model_alias(name, LIVE, str(version))
    return version


def end_experiment(client: MlflowClient, model_name: str, version: int, verdict: str) -> None:
    """Mark the experiment ended with its verdict; `live` no longer points at it."""
    name = experiment_model_name(model_name)
    client.set_model_version_tag(name, str(version), "experiment.verdict", verdict)
    client.set_model_version_tag(name, str(version), STATUS_TAG, ENDED_STATUS)
    if current_alias_version(client, name, LIVE) == version:
        client.delete_registered_model_alias(name, LIVE)


def download_experiment(model_name: str, version: int, destination: Path) -> Path:
    """The registered experiment model's folder (spec and both arms' bundles)."""
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=model_uri(experiment_model_name(model_name), version=version),
        dst_path=str(destination),
    )
    folder = Path(local) / "artifacts" / EXPERIMENT_ARTIFACT
    for arm in ARMS:
        verify_bundle(folder / arm)
    return folder
