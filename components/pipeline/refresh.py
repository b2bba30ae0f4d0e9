"""Index refresh: the champion's bundle brought up to date with newer data, without retraining.

Listings sell within days, so between two retrains the served index fills with sold
listings and misses new ones. `refresh_bundle` keeps the champion's learned files (the
encoder, and any other file copied unchanged) and rebuilds what depends on the data: the
Annoy index over the listings available now (every one embedded by the champion's item
tower at the new moment, so new listings are retrievable at once and sold ones are gone),
the recent popularity that answers unknown users (with the champion's settings), the
catalogue with its availability, each user's masked items and recent history. Seconds to
minutes, against a retrain's full pipeline.

A two-stage bundle (`two_stage/`) keeps its LightGBM ranker (and encoder) and gets the
rest rebuilt at the new moment the way a retrain builds it (`components.ranking.model.
serving_two_stage`): the retrieval stack's candidate models (popularity, co-visitation,
EASE / iALS refitted on the new data; no label stage, no ranker training), its Annoy index
when it has one, its listings and availability, and the feature tables. Known users,
whom the ranker answers, then get new listings as candidates at once, users who arrived
since the retrain are ranked too, and the features describe the present (recent
popularity, the user's latest activity) instead of the retrain's moment.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import EvaluationConfig, RankedListsConfig
from components.data.schema import CanonicalTables
from components.data.split import available_at, latest_moment
from components.evaluation.protocol import masked_history
from components.retrieval.popularity import RecentPopularity
from components.serving.bundle import (
    TWO_STAGE_DIR,
    TWO_TOWER_SOURCE,
    build_bundle,
    seal_bundle,
)
from components.serving.list_writer import write_ranked_lists
from components.serving.ranked_lists import RANKED_LISTS_DIR
from components.store import atomic_directory, hash_json, read_json

#: Files and folders `build_bundle` writes; everything else in a bundle is copied as is.
REBUILT = ("bundle.json", "model", "items.parquet", "user_exclusions.parquet", "history.parquet")
ENCODER = "encoder"
INDEX = "index"


class RefreshError(ValueError):
    """The champion or the new data cannot be refreshed; the message says why and what to do."""


def bundle_content_hash(folder: Path) -> str:
    """Hash of every file's bytes in a folder (to prove two bundles share an encoder)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def refresh_bundle(
    champion_dir: Path,
    tables: CanonicalTables,
    target: Path,
    evaluation: EvaluationConfig,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write into `target` (atomically) the champion's bundle refreshed with `tables`.

    Returns counts (new listings embedded, listings dropped as sold or unavailable,
    listings indexed) and `changed: False` when `tables` hold nothing newer than the
    champion's data (then `target` is not written).
    """
    champion_dir = Path(champion_dir)
    metadata = read_json(champion_dir / "bundle.json")
    built_until = _built_until(champion_dir, metadata)
    items, interactions = tables.items, tables.interactions
    now = latest_moment(interactions, items)
    if now is None or now <= built_until:
        return {"changed": False, "built_until": built_until.isoformat(), "data_until": None}
    started = time.perf_counter()
    available = available_at(items, now)
    previous = pd.read_parquet(champion_dir / "items.parquet", columns=["item_id", "available"])
    was_available = set(previous.loc[previous["available"], "item_id"].astype(str))
    available_ids = set(items.loc[available.to_numpy(bool), "item_id"].astype(str))
    created = items["created_at"]
    new_ids = set(items.loc[(created > built_until).fillna(False).to_numpy(bool), "item_id"])
    exclusions = masked_history(interactions, evaluation)
    two_tower = metadata.get("model_kind") == TWO_TOWER_SOURCE
    refreshed = _refreshed_metadata(metadata, built_until, now, extra_metadata)
    with atomic_directory(Path(target), overwrite=True) as staging:
        _write_refreshed_bundle(
            staging, champion_dir, tables, available, now, exclusions, refreshed, two_tower
        )
        two_stage = (champion_dir / TWO_STAGE_DIR).is_dir()
        if two_stage:
            _refresh_two_stage(champion_dir, staging, tables, available, now)
        for entry in champion_dir.iterdir():
            skipped = (*REBUILT, ENCODER, INDEX, RANKED_LISTS_DIR)
            if entry.name in skipped or (staging / entry.name).exists():
                continue
            copy = shutil.copytree if entry.is_dir() else shutil.copy2
            copy(entry, staging / entry.name)
        _refresh_ranked_lists(champion_dir, staging)
        seal_bundle(staging)
    return {
        "changed": True,
        "built_until": built_until.isoformat(),
        "data_until": now.isoformat(),
        "model_kind": "two_tower" if two_tower else "recent_popularity",
        "two_stage_rebuilt": two_stage,
        "new_listings": len(new_ids & available_ids),
        "dropped_listings": len(was_available - available_ids),
        "available_listings": len(available_ids),
        "encoder_sha256": bundle_content_hash(champion_dir / ENCODER) if two_tower else None,
        "content_id": hash_json(sorted(available_ids)),
        "refresh_s": round(time.perf_counter() - started, 3),
    }


def _refresh_ranked_lists(champion_dir: Path, staging: Path) -> None:
    """Recompute the users' ranked lists for the refreshed listings, with the champion's
    settings (a champion without lists gets none)."""
    described = champion_dir / RANKED_LISTS_DIR / "lists.json"
    if not described.is_file():
        return
    saved = read_json(described)
    settings = RankedListsConfig(
        depth=saved["depth"], max_users=saved["max_users"], batch_users=saved["batch_users"]
    )
    write_ranked_lists(staging, settings)


def _built_until(champion_dir: Path, metadata: dict[str, Any]) -> pd.Timestamp:
    """The end of the data the champion bundle was built from."""
    built = metadata.get("data_until")
    if built is None:
        raise RefreshError(
            f"the champion bundle at {champion_dir} records no data_until (its data had no "
            "timestamps): an index refresh needs timestamped listings; retrain instead"
        )
    return pd.Timestamp(str(built))


def _refreshed_metadata(
    metadata: dict[str, Any],
    built_until: pd.Timestamp,
    now: pd.Timestamp,
    extra_metadata: dict[str, Any] | None,
) -> dict[str, Any]:
    """The champion's bundle metadata moved to `now` (what the rebuild writes anew left out)."""
    rebuilt_keys = ("format", "model_kind", "files")
    kept_metadata = {k: v for k, v in metadata.items() if k not in rebuilt_keys}
    return {
        **kept_metadata,
        "data_until": now.isoformat(),
        "refreshed_from_data_until": built_until.isoformat(),
        # What the encoder and ranker were trained on ends here, through any chain of
        # refreshes: the monitor's reference window ends at it.
        "trained_until": str(metadata.get("trained_until", built_until.isoformat())),
        **(extra_metadata or {}),
    }


def _write_refreshed_bundle(
    staging: Path,
    champion_dir: Path,
    tables: CanonicalTables,
    available: pd.Series,
    now: pd.Timestamp,
    exclusions: pd.DataFrame,
    metadata: dict[str, Any],
    two_tower: bool,
) -> None:
    """The bundle's own files in `staging`: popularity refitted with the champion's
    settings, the listings on sale at `now`, and (two-tower) the index re-embedded with
    the champion's encoder and the recent history it pools."""
    items, interactions = tables.items, tables.interactions
    index_dir = history = None
    if two_tower:
        index_dir = staging.parent / f".{staging.name}.index"
        length = _rebuild_index(champion_dir, items, available, now, index_dir)
        history = _recent_history(interactions, length)
    try:
        # Popularity is a statistic of the data, not a learned model: refit it with the
        # champion's settings, or unknown users would get the retrain's bestsellers.
        popularity = RecentPopularity.load(champion_dir / "model").config
        build_bundle(
            staging,
            model=RecentPopularity.fit(interactions, popularity),
            items=items,
            available=available,
            user_exclusions=exclusions,
            metadata=metadata,
            encoder_dir=champion_dir / ENCODER if two_tower else None,
            index_dir=index_dir,
            history=history,
            seal=False,  # sealed by the caller, with the two-stage model and copied files
        )
    finally:
        if index_dir is not None:
            shutil.rmtree(index_dir, ignore_errors=True)


def _refresh_two_stage(
    champion_dir: Path,
    staging: Path,
    tables: CanonicalTables,
    available: pd.Series,
    now: pd.Timestamp,
) -> None:
    """The champion's two-stage model rebuilt from `tables` into `staging` with its own
    ranker, encoder and config. Its stack's Annoy index is the one just rebuilt for the
    bundle when the stack holds the bundle's very encoder and index (a retrain gives both
    the same), else its own, re-embedded with its encoder at `now`."""
    from components.ranking.model import TwoStageModel, serving_two_stage

    source = champion_dir / TWO_STAGE_DIR
    champion = TwoStageModel.load(source)
    stack = champion.stack
    index_dir = own_index = None
    try:
        if stack.index is not None and stack.encoder is not None:
            if _same_folders(source / "retrieval", champion_dir, (ENCODER, INDEX)):
                index_dir = staging / INDEX
            else:
                index_dir = own_index = staging / f".{TWO_STAGE_DIR}.index"
                _rebuild_index(source / "retrieval", tables.items, available, now, own_index)
        model = serving_two_stage(
            tables.interactions,
            tables.items,
            candidates=stack.settings,
            exclude_events=stack.exclude_events,
            feature_settings=champion.feature_settings,
            ranker=champion.ranker,
            encoder=stack.encoder,
            index_folder=index_dir,
        )
        model.save(staging / TWO_STAGE_DIR)
    finally:
        if own_index is not None:
            shutil.rmtree(own_index, ignore_errors=True)


def _same_folders(left: Path, right: Path, names: tuple[str, ...]) -> bool:
    """Whether each of `names` is a folder in both, with the same files byte for byte."""
    return all(
        (left / name).is_dir()
        and (right / name).is_dir()
        and bundle_content_hash(left / name) == bundle_content_hash(right / name)
        for name in names
    )


def _rebuild_index(
    champion_dir: Path,
    items: pd.DataFrame,
    available: pd.Series,
    now: pd.Timestamp,
    folder: Path,
) -> int:
    """Embed every listing available `now` with the item tower in `champion_dir/encoder` and
    index them with the settings of `champion_dir/index` (a bundle, or a two-stage stack);
    returns the encoder's history length."""
    from components.config import AnnoyConfig
    from components.retrieval.ann_index import AnnIndex, build_annoy_index
    from components.retrieval.two_tower import TrainedTwoTower

    trained = TrainedTwoTower.load(champion_dir / ENCODER)
    old = AnnIndex.load(champion_dir / INDEX)
    settings = AnnoyConfig(
        n_trees=old.n_trees,
        search_k=old.search_k,
        search_k_factor=old.search_k_factor,
        inner_product=old.inner_product,
        seed=old.seed,
    )
    listings = items[available.to_numpy(bool)]
    if listings.empty:
        raise RefreshError(
            f"no listing is available at {now.isoformat()} in the new data: nothing to "
            "index; check the source's items table (created_at / sold_at)"
        )
    vectors = trained.embed_items(listings, now)
    build_annoy_index(vectors, listings["item_id"].astype(str).tolist(), settings, folder)
    return trained.config.history_length


def _recent_history(interactions: pd.DataFrame, length: int) -> pd.DataFrame:
    """Each user's last `length` interactions (what the user tower pools at serving)."""
    ordered = interactions.sort_values(["user_id", "ts"], kind="stable")
    return ordered.groupby("user_id", sort=False).tail(length).reset_index(drop=True)


class SmokeTestError(RuntimeError):
    """A refreshed version answered wrongly; it stays registered but never becomes champion."""


def register_refreshed_version(
    client: Any,
    run_id: str,
    bundle_dir: Path,
    model_name: str,
    tags: dict[str, str],
    example_user_id: str | None,
) -> int:
    """Log the refreshed bundle as the run's pyfunc and register it as a new version, with
    its tags and no alias: `challenger` stays on the last retrained version, and `champion`
    moves only after the smoke test (flows.refresh_index)."""
    from components.registry.registration import PARENT_RUN_TAG, log_bundle

    source = log_bundle(run_id, bundle_dir, example_user_id)
    created = client.create_model_version(
        model_name,
        source=source,
        run_id=run_id,
        tags={**tags, PARENT_RUN_TAG: run_id},
        await_creation_for=60,
    )
    return int(created.version)


def answer_problems(
    model: Any, user_ids: list[str], unavailable_item_ids: set[str], k: int = 10
) -> list[str]:
    """Ask the loaded pyfunc for `k` items per user; what is wrong with the answers (empty:
    every user answered, finite scores, and not one unavailable (sold, removed) listing)."""
    answer = model.predict(pd.DataFrame({"user_id": user_ids}), params={"k": k})
    problems = []
    sizes = answer.groupby("user_id").size()
    missing = [user for user in user_ids if sizes.get(user, 0) == 0]
    if missing:
        problems.append(f"no answer for users {missing[:5]}")
    if not np.isfinite(answer["score"].to_numpy(float)).all():
        problems.append("non-finite scores")
    leaked = sorted(set(answer["item_id"].astype(str)) & unavailable_item_ids)
    if leaked:
        problems.append(f"{len(leaked)} unavailable listings recommended, e.g. {leaked[:5]}")
    return problems
