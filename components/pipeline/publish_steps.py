"""The publish phase's steps: assemble the served bundle, compare the challenger with the
registry's champion, register it, and run the promotion gate. They read and write the
MLflow registry (never cached by the flows); plain functions, like the other steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.config import PipelineConfig
from components.data.split import available_at, latest_moment, read_split
from components.evaluation.protocol import masked_history
from components.pipeline.data_steps import require_enough_test_users
from components.pipeline.evaluation_steps import compare_with_champion_bundle
from components.pipeline.results import BundleResult, RegisteredModel
from components.registry import promotion
from components.registry.registration import (
    CHAMPION,
    download_alias_bundle,
    log_and_register,
    version_aliases,
)
from components.registry.tracking import configure_mlflow
from components.retrieval.popularity import RecentPopularity
from components.serving.bundle import build_bundle, seal_bundle
from components.serving.list_writer import write_ranked_lists
from components.settings import RewearSettings
from components.store import atomic_directory


def bundle(
    split_uri: str,
    final_model_uri: str,
    config: PipelineConfig,
    run_dir: Path,
    encoder_uri: str | None = None,
    serving_index_uri: str | None = None,
    two_stage_uri: str | None = None,
    **metadata: Any,
) -> BundleResult:
    """Assemble the served bundle: the model, listings unsold at the end of the data, and
    each user's masked items (never re-recommend what they bought); for the two-tower
    kind also the encoder, the serving index and each user's recent history; with a ranker
    the two-stage model (retrieval stack, features, LightGBM booster) that ranks known
    users, and the known users' ranked lists (`config.serving.ranked_lists`). Refuses a
    test window too thin to trust (`require_enough_test_users`), so that nothing measured
    on it is registered."""
    data = read_split(Path(split_uri))
    require_enough_test_users(data, config.evaluation, config.registry.promotion.min_users)
    items = data.tables.items
    interactions = data.serving_history()
    exclusions = masked_history(interactions, config.evaluation)
    latest = latest_moment(interactions, items)
    history = None
    if encoder_uri is not None:
        length = config.model.two_tower.history_length
        history = interactions.sort_values(["user_id", "ts"], kind="stable")
        history = history.groupby("user_id", sort=False).tail(length).reset_index(drop=True)
    target = Path(run_dir) / "bundle"
    with atomic_directory(target, overwrite=True) as staging:
        build_bundle(
            staging,
            model=RecentPopularity.load(Path(final_model_uri)),
            items=items,
            available=available_at(items, latest),
            user_exclusions=exclusions,
            metadata={
                "dataset": config.name,
                "data_until": None if latest is None else latest.isoformat(),
                **metadata,
            },
            encoder_dir=None if encoder_uri is None else Path(encoder_uri),
            index_dir=None if serving_index_uri is None else Path(serving_index_uri),
            history=history,
            two_stage_dir=None if two_stage_uri is None else Path(two_stage_uri),
            seal=False,  # sealed with the ranked lists computed from the rest
        )
        write_ranked_lists(staging, config.serving.ranked_lists)
        seal_bundle(staging)
    return {"uri": str(target), "example_user_id": str(interactions["user_id"].iloc[-1])}


def compare_with_champion(
    split_uri: str,
    model_uri: str,
    snapshot_id: str,
    config: PipelineConfig,
    run_dir: Path,
) -> dict[str, Any] | None:
    """Paired comparison with the current champion on data neither model has seen (None:
    no champion yet)."""
    client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
    found = download_alias_bundle(
        client, config.registry.model_name, CHAMPION, Path(run_dir) / "champion"
    )
    if found is None:
        return None
    version, bundle_dir = found
    return compare_with_champion_bundle(
        split_uri, model_uri, str(bundle_dir), version, snapshot_id, config.evaluation
    )


def register(
    split_uri: str,
    final_model_uri: str,
    config: PipelineConfig,
    run_dir: Path,
    run_id: str,
    tags: dict[str, str],
    encoder_uri: str | None = None,
    serving_index_uri: str | None = None,
    two_stage_uri: str | None = None,
) -> RegisteredModel:
    """Build the bundle and register it as a new version of the configured model, logged
    under the MLflow run `run_id` and aliased `challenger` (never `champion`: see
    `promote`)."""
    client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
    built = bundle(
        split_uri,
        final_model_uri,
        config,
        run_dir,
        encoder_uri,
        serving_index_uri,
        two_stage_uri=two_stage_uri,
        **tags,
    )
    registered = log_and_register(
        client,
        run_id,
        Path(built["uri"]),
        config.registry.model_name,
        tags,
        example_user_id=built["example_user_id"],
    )
    return {
        "name": registered.name,
        "version": registered.version,
        "aliases": registered.aliases,
        "bundle_uri": built["uri"],
        "example_user_id": built["example_user_id"],
    }


def promote(
    registered: RegisteredModel,
    comparison: dict[str, Any] | None,
    metrics: dict[str, float],
    config: PipelineConfig,
    force: bool = False,
) -> dict[str, Any]:
    """The promotion gate: fresh-process smoke test, decision, tags, then `champion`."""
    settings = RewearSettings()
    client, _ = configure_mlflow(settings, config.registry.experiment)
    name, version = registered["name"], registered["version"]
    if comparison is not None and config.registry.promotion.off_policy.enabled:
        from components.pipeline.off_policy import off_policy_comparison

        champion = int(comparison["champion_version"])
        comparison = {
            **comparison,
            "off_policy": off_policy_comparison(config, int(version), champion),
        }
    decision = promotion.run_gate(
        client,
        settings.tracking_uri,
        name,
        version,
        Path(registered["bundle_uri"]),
        registered["example_user_id"],
        comparison,
        metrics,
        config.registry.promotion,
        settings.locks,
        force,
    )
    return {**decision.to_dict(), "aliases": version_aliases(client, name, version)}
