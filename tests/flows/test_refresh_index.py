"""The refresh_index flow: new listings retrievable, sold ones gone, same encoder and ranker,
new version."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from components.pipeline.refresh import bundle_content_hash
from components.ranking.model import TwoStageModel
from components.registry.lineage import walk_lineage
from components.retrieval.ann_index import AnnIndex
from components.retrieval.popularity import RecentPopularity
from components.serving.ranked_lists import RANKED_LISTS_DIR, RankedLists
from components.serving.recommender import FALLBACK_SOURCE
from components.settings import RewearSettings
from flows.cli_output import refresh_summary
from tests.flows.conftest import TWO_TOWER_OVERRIDES, last_moment, small_market, write_market

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _client() -> MlflowClient:
    uri = RewearSettings().tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _answers(users: list[str], k: int = 100) -> pd.DataFrame:
    model = mlflow.pyfunc.load_model("models:/rewear@champion")
    return model.predict(pd.DataFrame({"user_id": users}), params={"k": k})


@pytest.mark.slow
def test_refresh_publishes_the_champion_without_sold_listings_and_with_new_ones(
    rewear_home, tmp_path
):
    from flows.refresh_index import refresh_index
    from flows.retrain import retrain

    tables = small_market()
    cut = last_moment(tables) - pd.Timedelta("2D")
    config = write_market(tables, tmp_path / "market", cut)
    started = time.perf_counter()
    retrained = retrain(config_path=str(config), overrides=TWO_TOWER_OVERRIDES)
    retrain_s = time.perf_counter() - started
    client = _client()
    if not client.get_registered_model("rewear").aliases.get("champion"):
        client.set_registered_model_alias("rewear", "champion", str(retrained["model"]["version"]))
    source = int(client.get_registered_model("rewear").aliases["champion"])
    users = tables.interactions["user_id"].value_counts().index[:60].tolist()
    items = tables.items
    sold_since = set(items.loc[items["sold_at"] >= cut, "item_id"])
    new_since = set(items.loc[(items["created_at"] >= cut) & items["sold_at"].isna(), "item_id"])
    before = set(_answers(users)["item_id"])
    assert before & sold_since, "precondition: the champion recommends listings sold later"

    unchanged = refresh_index(config_path=str(config))  # no newer data yet
    assert unchanged["status"] == "unchanged" and unchanged["version"] is None
    line = refresh_summary(unchanged)  # what `rewear refresh-index` prints
    assert line.startswith("unchanged: no data newer than champion v1's (") and "None" not in line

    write_market(tables, tmp_path / "market")  # two more days: sales and new listings
    started = time.perf_counter()
    result = refresh_index(config_path=str(config))
    refresh_s = time.perf_counter() - started
    print(f"retrain {retrain_s:.1f}s, refresh {refresh_s:.1f}s, {result['refresh']}")
    assert result["status"] == "completed" and result["promoted"] is True
    version = result["version"]
    assert version == source + 1
    assert result["aliases"] == ["champion"]
    refresh = result["refresh"]
    assert refresh["new_listings"] == len(new_since)
    assert refresh["dropped_listings"] >= len(sold_since & before)

    after = _answers(users)
    assert not set(after["item_id"]) & sold_since
    assert set(after["item_id"]) & new_since, "new listings are retrievable at once"
    assert set(after.loc[after["user_id"] == users[0], "source"]) == {"two_tower"}

    tags = client.get_model_version("rewear", str(version)).tags
    assert tags["kind"] == "index_refresh"
    assert tags["refreshed_from_version"] == str(source)
    assert tags["encoder_from_version"] == str(source)
    assert tags["same_encoder"] == "true" and tags["same_ranker"] == "true"
    assert tags["smoke_test"] == "passed"
    assert tags["snapshot_id"] == retrained["snapshot_id"]
    source_dir = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/rewear/{source}", dst_path=str(tmp_path / "a")
        )
    )
    new_dir = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/rewear/{version}", dst_path=str(tmp_path / "b")
        )
    )
    old_bundle, new_bundle = source_dir / "artifacts" / "bundle", new_dir / "artifacts" / "bundle"
    assert tags["encoder_sha256"] == bundle_content_hash(old_bundle / "encoder")
    assert bundle_content_hash(new_bundle / "encoder") == bundle_content_hash(
        old_bundle / "encoder"
    )
    indexed = set(AnnIndex.load(new_bundle / "index").item_ids)
    assert not indexed & sold_since and new_since <= indexed
    assert len(indexed) == refresh["available_listings"]
    lineage = walk_lineage(client, "rewear", "champion", rewear_home / "snapshots")
    assert lineage.version == version
    assert lineage.snapshot.snapshot_id == retrained["snapshot_id"]
    challenger = client.get_registered_model("rewear").aliases.get("challenger")
    assert challenger is None or int(challenger) != version  # refresh never takes challenger


@pytest.mark.slow
def test_refresh_rebuilds_the_two_stage_model_around_the_champions_ranker(rewear_home, tmp_path):
    """The default bundle (candidates of every source, the two-tower among them, re-ranked
    by LightGBM): after a refresh the ranker itself answers known users with listings
    created since the retrain, never sold ones, with the same booster files and encoder,
    and a stack at the new moment whose re-embedded index retrieves the new listings."""
    from flows.refresh_index import refresh_index
    from flows.retrain import retrain

    tables = small_market()
    cut = last_moment(tables) - pd.Timedelta("2D")
    config = write_market(tables, tmp_path / "market", cut)
    overrides = {"evaluation.bootstrap_resamples": 50, "model.two_tower.max_epochs": 2}
    retrained = retrain(config_path=str(config), overrides=overrides)
    client = _client()
    if not client.get_registered_model("rewear").aliases.get("champion"):
        client.set_registered_model_alias("rewear", "champion", str(retrained["model"]["version"]))
    source = int(client.get_registered_model("rewear").aliases["champion"])
    known = tables.interactions[tables.interactions["ts"] < cut]
    users = known["user_id"].value_counts().index[:60].tolist()
    items = tables.items
    sold_since = set(items.loc[items["sold_at"] >= cut, "item_id"])
    new_since = set(items.loc[(items["created_at"] >= cut) & items["sold_at"].isna(), "item_id"])
    before = _answers(users)
    firsts = before.groupby("user_id")["source"].first()
    assert (firsts != FALLBACK_SOURCE).all(), "precondition: the ranker answers them"

    write_market(tables, tmp_path / "market")
    result = refresh_index(config_path=str(config))
    assert result["status"] == "completed" and result["promoted"] is True
    assert result["refresh"]["two_stage_rebuilt"] is True

    after = _answers(users)
    ranked = after[after["source"] != FALLBACK_SOURCE]
    assert not set(after["item_id"]) & sold_since
    assert set(ranked["item_id"]) & new_since, "the ranker's candidates hold new listings"

    bundles = {}
    for version in (source, result["version"]):
        folder = mlflow.artifacts.download_artifacts(
            f"models:/rewear/{version}", dst_path=str(tmp_path / f"v{version}")
        )
        bundles[version] = Path(folder) / "artifacts" / "bundle" / "two_stage"
    old, new = bundles[source], bundles[result["version"]]
    assert bundle_content_hash(new / "ranker") == bundle_content_hash(old / "ranker")
    old_model, new_model = TwoStageModel.load(old), TwoStageModel.load(new)
    assert new_model.stack.moment > old_model.stack.moment >= cut - pd.Timedelta("1D")
    assert new_model.stack.moment > last_moment(tables)
    assert new_model.features.categories == old_model.features.categories
    # The two-tower: the same encoder, listings re-embedded and re-indexed at the refresh.
    assert bundle_content_hash(new / "retrieval" / "encoder") == bundle_content_hash(
        old / "retrieval" / "encoder"
    )
    indexed = set(AnnIndex.load(new.parent / "index").item_ids)
    assert new_since <= indexed and not indexed & sold_since
    candidates = new_model.stack.candidates(users)
    from_index = set(candidates.loc[candidates["rank_two_tower"].notna(), "item_id"])
    assert from_index & new_since, "a listing created after the retrain is retrieved by ANN"
    # The users' ranked lists are recomputed for the refreshed listings, not copied.
    lists = RankedLists.load(new.parent / RANKED_LISTS_DIR)
    catalogue = pd.read_parquet(new.parent / "items.parquet")["item_id"].to_numpy()
    listed = set(catalogue[lists.rows[lists.rows >= 0]])
    assert listed & new_since and not listed & sold_since
    # The unknown users' popularity is refitted with the champion's settings.
    old_popularity = RecentPopularity.load(old.parent / "model")
    new_popularity = RecentPopularity.load(new.parent / "model")
    assert new_popularity.config == old_popularity.config
    assert new_popularity.as_of > old_popularity.as_of + pd.Timedelta("1D")
    assert set(new_popularity.item_ids) & new_since
