"""`rewear evaluate`: score a registered version on a snapshot beside the baselines, or
estimate it off-policy from the explored exposure log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from flows.cli_output import print_evaluation, print_off_policy, write_result
from flows.cli_setup import checked_overrides, errors, parse_overrides, prepare_environment


def evaluate(
    model_uri: Annotated[
        str,
        typer.Option(
            "--model",
            help="Registered model (models:/rewear@champion, models:/rewear/3) or a bundle folder",
        ),
    ] = "models:/rewear@champion",
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML")] = Path(
        "configs/synthetic.yaml"
    ),
    snapshot: Annotated[
        str | None, typer.Option(help="Snapshot id under REWEAR_HOME/snapshots (default: ingest)")
    ] = None,
    stage: Annotated[str, typer.Option(help="Window to score: test or valid")] = "test",
    output: Annotated[
        Path | None, typer.Option("--json", help="Also write the result here")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: --set split.test_duration=14D"),
    ] = None,
    off_policy: Annotated[
        bool,
        typer.Option(
            "--off-policy",
            help="Estimate the version's sold listings per session from the explored "
            "exposure log instead (and champion's, for the difference)",
        ),
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="--off-policy: first UTC day of the log to use")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="--off-policy: UTC day the log ends (exclusive)")
    ] = None,
) -> None:
    """Score a registered model version on a snapshot with the config's protocol, beside
    the baselines, and print the summary table. Only the version's bundle is read (native
    formats, checked against its manifest): no model code or pickle from it is run. With
    --off-policy: estimate what the version would have sold per session on the sessions
    served with exploration (experiment.exploration), before it gets any traffic."""
    if off_policy:
        _evaluate_off_policy(model_uri, config, overrides, since, until, output)
        return
    settings = prepare_environment()
    if stage not in ("test", "valid"):
        raise typer.BadParameter(f"--stage must be test or valid, got {stage!r}")
    pipeline = _loaded_config(config, overrides)
    result = _evaluate_on_snapshot(settings, pipeline, model_uri, snapshot, stage)
    print_evaluation(result)
    write_result(result, output)


def _loaded_config(config: Path, overrides: list[str] | None) -> Any:
    """The pipeline config with its --set values; a bad one is one line, exit 2."""
    from components.config import ConfigError, load_config

    try:
        return load_config(config, parse_overrides(overrides or []))
    except ConfigError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from error


def _evaluate_on_snapshot(
    settings: Any, pipeline: Any, model_uri: str, snapshot: str | None, stage: str
) -> dict[str, Any]:
    """Load the version's bundle (exit 1 if it cannot be) and score it on `snapshot`'s
    `stage` window (a fresh ingest when no snapshot is named; exit 2 on a data problem)."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from components.data.snapshot import SnapshotError, load_snapshot_manifest
    from components.pipeline import evaluation_steps
    from components.registry.registration import load_bundle
    from components.registry.tracking import TrackingStoreError, use_tracking_store
    from components.serving.bundle import BundleError

    with tempfile.TemporaryDirectory(prefix="rewear-evaluate-") as download:
        try:
            use_tracking_store(settings)
            recommender = load_bundle(model_uri, Path(download))
        except (MlflowException, BundleError, TrackingStoreError) as error:
            message = getattr(error, "message", None) or str(error)
            errors.print(f"[red]error:[/red] cannot load {model_uri}: {message}")
            raise typer.Exit(1) from error
        try:
            if snapshot is None:
                snapshot = _ingested_snapshot(settings, pipeline)
            snapshot_path = load_snapshot_manifest(settings.snapshots / snapshot).path
            result = evaluation_steps.evaluate_registered(
                recommender, snapshot_path, pipeline, stage
            )
        except (SnapshotError, evaluation_steps.LeakageError, ValueError) as error:
            errors.print(f"[red]error:[/red] {error}")
            raise typer.Exit(2) from error
    return {"model_uri": model_uri, "snapshot_id": snapshot, "stage": stage, **result}


def _ingested_snapshot(settings: Any, pipeline: Any) -> str:
    """Ingest the config's source into a new snapshot under REWEAR_HOME; its id."""
    import tempfile

    from components.pipeline import chain, data_steps

    with tempfile.TemporaryDirectory() as scratch:
        validated = chain.validated_source(pipeline, Path(scratch), chain.Stages())
        written = data_steps.snapshot(validated["uri"], settings.snapshots)
        return written["snapshot_id"]


def _evaluate_off_policy(
    model_uri: str,
    config: Path,
    overrides: list[str] | None,
    since: str | None,
    until: str | None,
    output: Path | None,
) -> None:
    """`--off-policy`: the version's (and champion's) estimates on the explored log."""
    from mlflow.exceptions import MlflowException

    from components.config import load_config
    from components.experiments.off_policy import NoSupportError
    from components.pipeline.off_policy import evaluate_off_policy, resolve_version

    settings = prepare_environment()
    parsed = checked_overrides(config, overrides)
    pipeline = load_config(config, parsed)
    try:
        bounds = [None if day is None else pd_timestamp(day) for day in (since, until)]
        version, champion = resolve_version(settings, pipeline, model_uri)
        wanted = [version] if champion in (None, version) else [version, champion]
        gate = pipeline.registry.promotion.off_policy
        result = evaluate_off_policy(pipeline, wanted, *bounds, estimator=gate.estimator)
    except (NoSupportError, MlflowException, ValueError) as error:
        message = getattr(error, "message", None) or str(error)
        errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
        raise typer.Exit(2) from error
    result = {"model_uri": model_uri, "version": version, "champion": champion, **result}
    print_off_policy(result)
    write_result(result, output)


def pd_timestamp(day: str) -> Any:
    """A `--since`/`--until` day as a UTC timestamp, or a ValueError naming it."""
    import pandas as pd

    try:
        return pd.Timestamp(day, tz="UTC")
    except ValueError as error:
        raise ValueError(f"{day!r} is not a date: give e.g. 2026-03-01") from error
