"""Logging the bundle to MLflow, registering it, tagging its lineage and setting aliases."""

from __future__ import annotations

import subprocess
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from packaging.version import Version

from components.config import ModelConfig
from components.serving.bundle import BundleError, verify_bundle
from components.serving.pyfunc import BUNDLE_ARTIFACT, model_signature
from components.serving.recommender import BundleRecommender

CHAMPION = "champion"
CHALLENGER = "challenger"
#: Version tag naming the MLflow run that logged the version (its lineage parent).
PARENT_RUN_TAG = "parent_run_id"
MODEL_CODE = Path(__file__).resolve().parents[1] / "serving" / "pyfunc_model.py"
COMPONENTS_DIR = Path(__file__).resolve().parents[1]
#: Distributions the logged code imports when MLflow loads the model (the bundle's loaders:
#: LightGBM, torch, Annoy, scipy, the candidate sources' implicit, ...), plus pyarrow for
#: parquet. `tests/components/serving/test_requirements.py` checks them against the
#: imports of the logged code.
SERVING_PACKAGES = (
    "mlflow",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "lightgbm",
    "torch",
    "annoy",
    "implicit",
    "threadpoolctl",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
)


def serving_requirements() -> list[str]:
    """`name==version` of each serving package as installed here (public version: torch
    2.13.0+cpu is pinned as 2.13.0, which the CPU build satisfies)."""
    return [f"{name}=={Version(version(name)).public}" for name in SERVING_PACKAGES]


def model_tags(model: ModelConfig) -> dict[str, str]:
    """Version tags that say what the registered recommender is."""
    described = model.describe()
    return {
        "model": model.summary(),
        "model.kind": described["kind"],
        "model.sources": ",".join(described["sources"]),
        "model.ranker": described["ranker"] or "none",
    }


def mlflow_key(name: str) -> str:
    """MLflow metric and tag names allow no '@': `recall@20` -> `recall_at_20`."""
    return name.replace("@", "_at_")


def model_uri(name: str, alias: str | None = None, version: int | str | None = None) -> str:
    """`models:/name@alias` or `models:/name/version`."""
    if alias is not None:
        return f"models:/{name}@{alias}"
    if version is None:
        raise ValueError("model_uri needs an alias or a version")
    return f"models:/{name}/{version}"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    aliases: list[str]


def log_and_register(
    client: MlflowClient,
    run_id: str,
    bundle_dir: Path,
    model_name: str,
    tags: dict[str, str],
    example_user_id: str | None = None,
) -> RegisteredVersion:
    """Log the bundle as a pyfunc under `run_id`, register a new version, tag it, and alias it
    `challenger`.

    `champion` is never set here, not even for a model's first version: only the promotion
    gate (components.registry.promotion) moves it, after its checks. `parent_run_id` (the
    MLflow run that logged the bundle) is added to `tags`.
    """
    source = log_bundle(run_id, bundle_dir, example_user_id)
    ensure_registered_model(client, model_name)
    # Tags go in with the version itself, so no version ever exists without its lineage.
    created = client.create_model_version(
        model_name,
        source=source,
        run_id=run_id,
        tags={**{key: str(value) for key, value in tags.items()}, PARENT_RUN_TAG: run_id},
        await_creation_for=60,
    )
    version = int(created.version)
    client.set_registered_model_alias(model_name, CHALLENGER, str(version))
    return RegisteredVersion(model_name, version, version_aliases(client, model_name, version))


def log_bundle(run_id: str, bundle_dir: Path, example_user_id: str | None = None) -> str:
    """Log `bundle_dir` as the rewear pyfunc (models-from-code, with this code) under
    `run_id`; returns the logged model's URI. With `example_user_id`, MLflow runs the bundle
    on that request while logging (a smoke test for free). The bundle is logged as it is:
    the promotion gate's fresh-process load refuses one that does not verify."""
    return log_served_model(
        run_id,
        MODEL_CODE,
        {BUNDLE_ARTIFACT: str(bundle_dir)},
        model_signature(),
        None if example_user_id is None else pd.DataFrame({"user_id": [example_user_id]}),
    )


def log_served_model(
    run_id: str,
    model_code: Path,
    artifacts: dict[str, str],
    signature: ModelSignature,
    input_example: pd.DataFrame | None = None,
) -> str:
    """Log a models-from-code pyfunc (with this code and the serving requirements) under
    `run_id`, which stays open; returns the logged model's URI. Without `input_example`
    (the experiment model: running it would log exposures) the signature alone describes
    the input, and MLflow's advice to add an example is not printed."""
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*An input example was not provided", category=UserWarning
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(model_code),
            artifacts=artifacts,
            code_paths=[str(COMPONENTS_DIR)],
            signature=signature,
            pip_requirements=serving_requirements(),
            input_example=input_example,
        )
    # Leaving `start_run` ended the run (FINISHED); it stays open until its report is logged.
    MlflowClient().update_run(run_id, status="RUNNING")
    return info.model_uri


def ensure_registered_model(client: MlflowClient, model_name: str) -> None:
    """Create the registered model unless it exists (a concurrent run may have made it)."""
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def version_aliases(client: MlflowClient, model_name: str, version: int) -> list[str]:
    return sorted(client.get_model_version(model_name, str(version)).aliases)


def current_alias_version(client: MlflowClient, model_name: str, alias: str) -> int | None:
    try:
        return int(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def download_alias_bundle(
    client: MlflowClient, model_name: str, alias: str, destination: Path
) -> tuple[int, Path] | None:
    """Fetch the bundle folder of `models:/name@alias` (None when the alias is not set),
    its files checked against the manifest (`BundleError` names a corrupt one)."""
    found = current_alias_version(client, model_name, alias)
    if found is None:
        return None
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=model_uri(model_name, version=found),
        dst_path=str(destination),
    )
    bundle = Path(local) / "artifacts" / BUNDLE_ARTIFACT
    verify_bundle(bundle)
    return found, bundle


def load_bundle(model: str, scratch: Path) -> BundleRecommender:
    """The bundle of a registered version or a local folder, read only through
    `BundleRecommender.load`: native formats checked against the manifest, no MLflow
    model loading, so no code or pickle from the model is ever run.

    `model`: a model URI (`models:/rewear@champion`, `models:/rewear/3`, `runs:/...`),
    downloaded into `scratch`; or a local bundle folder, or a logged model folder holding
    `artifacts/bundle`. Raises `BundleError` for anything else.
    """
    local = Path(model)
    if not local.exists() and ":" in model:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(scratch)))
    for folder in (local, local / "artifacts" / BUNDLE_ARTIFACT):
        if (folder / "bundle.json").is_file():
            return BundleRecommender.load(folder)
    raise BundleError(
        f"{model} is not a rewear bundle (no bundle.json, nor artifacts/{BUNDLE_ARTIFACT}/"
        "bundle.json): pass a registered version (models:/rewear@champion, models:/rewear/3) "
        "or a bundle folder that `rewear retrain` wrote"
    )


def git_commit(cwd: Path | None = None) -> str:
    """The commit of the code that trains, or 'unknown' outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or COMPONENTS_DIR.parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=cwd or COMPONENTS_DIR.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    ).stdout.strip()
    return f"{commit}-dirty" if dirty else commit
