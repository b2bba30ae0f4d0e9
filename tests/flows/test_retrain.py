"""The retrain flow under a Prefect test harness, against a temporary MLflow store."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from components.config import SyntheticSourceConfig
from components.data.synthetic import generate_marketplace
from components.settings import RewearSettings

REPO = Path(__file__).resolve().parents[2]
SMALL_MARKET = {
    "source.n_users": 400,
    "source.n_sellers": 300,
    "source.n_days": 21,
    "source.listings_per_day": 100,
    "source.initial_listings": 500,
    # The default recommender (two-tower among the sources); two encoder epochs, so the
    # flow runs early stopping (the synthetic config trains one).
    "model.two_tower.max_epochs": 2,
}

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.mark.slow
def test_two_runs_register_two_versions_champion_stays_on_the_first(rewear_home, registry_client):
    from flows.retrain import retrain

    first = retrain(config_path=str(REPO / "configs" / "synthetic.yaml"), overrides=SMALL_MARKET)
    report_path = Path(first["report_path"])
    assert report_path == rewear_home / "runs" / first["run_id"] / "report.json"
    assert first["status"] == "completed"
    assert first["protocol"] == "temporal"
    assert first["model"] == {"name": "rewear", "version": 1, "aliases": ["challenger", "champion"]}
    assert first["promoted"] is True
    for key in ("recall@20", "ndcg@20", "recall@10", "ndcg@100"):
        assert 0 < first["metrics"][key] <= 1
        assert key in first["baselines"]["popularity"]
    assert set(first["timings_s"]) == {
        "ingest",
        "validate",
        "snapshot",
        "split",
        "fit",
        "train_encoder",
        "build_index",
        "evaluate",
        "compare_with_champion",
        "generate_candidates",
        "build_features",
        "train_ranker",
        "assemble_two_stage",
        "assemble_serving",
        "register",
        "promote",
    }
    assert (rewear_home / "snapshots" / first["snapshot_id"] / "manifest.json").is_file()
    # The model is the re-ranked two-stage one, scored beside its retrieval-only order.
    ranking = first["ranking"]
    assert ranking["best_iteration"] >= 1 and ranking["fit_queries"] > 0
    assert ranking["label_stage"]["label_moment"] == first["split"]["valid_cutoff"]
    assert "retrieval_only" in first["baselines"]
    assert "ndcg@10" in first["comparisons"]["retrieval_only"]

    # The readable reports: Prefect artifacts with stable keys, MLflow metrics and figures.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["rewear-retrain-summary-synthetic", "rewear-retrain-metrics-synthetic"]
    with get_client(sync_client=True) as prefect_client:
        artifacts = prefect_client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert set(by_key) == set(keys)
    summary = by_key[keys[0]].data
    assert "## Accuracy on the test window" in summary and "covisitation" in summary
    assert "Δ vs popularity" in summary and "cold_users" in summary
    client = registry_client
    logged = {a.path for a in client.list_artifacts(first["run_id"], "figures")}
    assert logged == {
        "figures/metric_at_k.png",
        "figures/exposure_lorenz.png",
        "figures/segments.png",
    }
    run = client.get_run(first["run_id"])
    assert run.data.metrics["test.recall_at_20"] == pytest.approx(first["metrics"]["recall@20"])
    assert "baseline.covisitation.ndcg_at_10" in run.data.metrics
    assert "ranker.best_iteration" in run.data.metrics
    assert any(key.startswith("ranker.early_stopping.ndcg") for key in run.data.metrics)
    for metric in ("ndcg@10", "gini_sellers@20", "new_item_exposure@20"):
        interval = first["comparisons"]["covisitation"][metric]
        assert interval["low"] <= interval["difference"] <= interval["high"], metric
    assert first["segments"]["cold_users"]["users"] > 0
    assert "gini_sellers@20" in first["metrics"]
    # The report, the run and the version say what the registered model is.
    assert first["recommender"] == {
        "kind": "two_stage",
        "sources": ["two_tower", "covisitation", "popularity", "category_popularity", "linear"],
        "ranker": "lightgbm",
    }
    assert first["retrieval"]["ann_recall@100"] >= 0.9
    assert first["retrieval"]["encoder_epochs"] and first["retrieval"]["serving_items"] > 0
    assert run.data.tags["rewear.model"].startswith("two_stage: two_tower+covisitation")
    assert "index.ann_recall_at_100" in run.data.metrics
    assert set(first["candidate_recall"]) == {
        "two_tower",
        "covisitation",
        "popularity",
        "category_popularity",
        "linear",
        "combined",
    }

    second = retrain(config_path=str(REPO / "configs" / "synthetic.yaml"), overrides=SMALL_MARKET)
    assert second["snapshot_id"] == first["snapshot_id"]  # same data, same snapshot
    assert second["model"]["version"] == 2
    assert second["model"]["aliases"] == ["challenger"]
    assert second["promoted"] is False
    assert first["champion_comparison"] is None  # nothing to compare with yet
    # v1 was refitted on all its data: no interaction is left that it has not seen.
    assert second["champion_comparison"]["champion_version"] == 1
    assert second["champion_comparison"]["comparable"] is False
    assert "no interaction after" in second["champion_comparison"]["reason"]
    # The gate: the first version had nothing to beat; the second cannot be compared.
    assert first["promotion"]["decision"] == "promoted"
    assert second["promotion"]["decision"] == "rejected"
    assert any("not comparable with champion v1" in r for r in second["promotion"]["reasons"])

    client = registry_client
    champion = client.get_model_version_by_alias("rewear", "champion")
    assert int(champion.version) == 1
    assert champion.tags["snapshot_id"] == first["snapshot_id"]
    assert champion.tags["config_hash"] == first["config_hash"]
    assert champion.tags["run_id"] == first["run_id"]
    assert champion.tags["git_commit"]
    assert champion.tags["model.kind"] == "two_stage"
    assert champion.tags["model.ranker"] == "lightgbm"
    assert champion.tags["model.sources"].split(",")[0] == "two_tower"
    assert float(champion.tags["metric.recall_at_20"]) == pytest.approx(
        first["metrics"]["recall@20"], abs=1e-6
    )

    # The champion answers with available listings only, never what the user bought.
    mlflow.set_tracking_uri(RewearSettings().tracking_uri)
    model = mlflow.pyfunc.load_model("models:/rewear@champion")
    tables = generate_marketplace(
        SyntheticSourceConfig(
            **{k.split(".")[1]: v for k, v in SMALL_MARKET.items() if k.startswith("source.")}
        )
    ).tables
    buyer = tables.interactions.loc[tables.interactions["event"] == "purchase", "user_id"].iloc[0]
    answer = model.predict(pd.DataFrame({"user_id": [buyer, "never-seen-user"]}), params={"k": 15})
    assert list(answer.columns[:5]) == ["user_id", "rank", "item_id", "score", "source"]
    assert (answer.groupby("user_id").size() == 15).all()
    # A known user is ranked by the LightGBM ranker over the candidate sources; an unknown
    # one gets popular available listings.
    sources = set(answer.loc[answer["user_id"] == buyer, "source"])
    assert sources <= {"two_tower", "covisitation", "popularity", "category_popularity", "linear"}
    assert set(answer.loc[answer["user_id"] == "never-seen-user", "source"]) == {
        "popularity_fallback"
    }
    sold = set(tables.items.loc[tables.items["sold_at"].notna(), "item_id"])
    assert not sold & set(answer["item_id"])
    bought = set(
        tables.interactions.loc[
            (tables.interactions["user_id"] == buyer)
            & (tables.interactions["event"] == "purchase"),
            "item_id",
        ]
    )
    assert not bought & set(answer.loc[answer["user_id"] == buyer, "item_id"])


def _market_csv(path: Path, damage: str) -> None:
    tables = generate_marketplace(
        SyntheticSourceConfig(n_users=50, n_sellers=30, n_days=10, listings_per_day=20)
    ).tables
    events = tables.interactions.copy()
    events["ts"] = events["ts"].astype("int64") // 10**6  # epoch milliseconds
    events = events.astype({"ts": "object"})
    if damage == "garbage":
        events.loc[events.index[::10], "ts"] = "garbage"
    elif damage == "missing_column":
        events = events.drop(columns=["item_id"])
    elif damage == "empty":
        events = events.iloc[:0]
    events.to_csv(path, index=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("garbage", "max_bad_share"),
        ("missing_column", "has no column 'item_id'"),
        ("empty", "has no rows"),
    ],
)
def test_bad_data_fails_before_training_and_leaves_the_registry_untouched(
    rewear_home, registry_client, tmp_path, damage, message
):
    from flows.retrain import retrain

    _market_csv(tmp_path / "events.csv", damage)
    config = tmp_path / "bad.yaml"
    config.write_text(
        "name: bad-input\n"
        "source: {kind: interactions_file, interactions: events.csv,\n"
        "         columns: {event: event, weight: weight, ts_unit: ms}}\n"
    )
    with pytest.raises(Exception, match=message):
        retrain(config_path=str(config))
    run_dirs = list((rewear_home / "runs").iterdir())
    assert len(run_dirs) == 1
    report = pd.read_json(run_dirs[0] / "report.json", typ="series")
    assert report["status"] == "failed"
    assert message in report["error"]
    if damage == "garbage":
        quarantined = pd.read_parquet(run_dirs[0] / "quarantine" / "interactions.parquet")
        assert len(quarantined) == report["validation"]["counts"]["interactions"]["quarantined"]
    assert not (run_dirs[0] / "models").exists()
    assert registry_client.search_registered_models() == []
    assert list((rewear_home / "snapshots").iterdir()) == []


@pytest.mark.slow
def test_a_test_window_thinner_than_min_users_fails_before_training(rewear_home, registry_client):
    from flows.retrain import retrain

    overrides = {**SMALL_MARKET, "registry.promotion.min_users": 100_000}
    with pytest.raises(Exception, match=r"registry\.promotion\.min_users=100000"):
        retrain(config_path=str(REPO / "configs" / "synthetic.yaml"), overrides=overrides)
    (run_dir,) = (rewear_home / "runs").iterdir()
    report = pd.read_json(run_dir / "report.json", typ="series")
    assert report["status"] == "failed" and "nothing is registered" in report["error"]
    assert not (run_dir / "models").exists()  # no encoder, no ranker: it stopped at the split
    assert registry_client.search_registered_models() == []


@pytest.mark.slow
def test_the_default_bundle_holds_the_encoder_and_annoy_index_and_ranks_with_ann(
    rewear_home, registry_client
):
    from flows.retrain import retrain

    result = retrain(config_path=str(REPO / "configs" / "synthetic.yaml"), overrides=SMALL_MARKET)
    assert result["status"] == "completed"
    assert all(0 <= value <= 1 for value in result["candidate_recall"].values())
    # The ranker learns from the encoder fitted before the valid window (the ANN source and
    # the cosine features), one label window only (the encoder saw the earlier ones).
    assert result["ranking"]["label_stage"]["label_windows"] == 1
    importance = result["ranking"]["importance"]
    assert any(name.endswith("_two_tower") for name in importance) or "x_cos_user" in importance
    run = registry_client.get_run(result["run_id"])
    assert "candidate_recall.two_tower" in run.data.metrics

    mlflow.set_tracking_uri(RewearSettings().tracking_uri)
    model = mlflow.pyfunc.load_model("models:/rewear@champion")
    bundle = rewear_home / "runs" / result["run_id"] / "bundle"
    assert (bundle / "encoder").is_dir() and list((bundle / "index").glob("*.ann"))
    assert list((bundle / "two_stage" / "retrieval" / "index").glob("*.ann"))
    tables = generate_marketplace(
        SyntheticSourceConfig(
            **{k.split(".")[1]: v for k, v in SMALL_MARKET.items() if k.startswith("source.")}
        )
    ).tables
    active = tables.interactions["user_id"].value_counts().index[:3].tolist()
    answer = model.predict(pd.DataFrame({"user_id": [*active, "never-seen"]}), params={"k": 10})
    sources = answer.groupby("user_id")["source"].agg(set)
    # The ranker scores a request's users in one batch: each answer is the one the user
    # gets when asked alone.
    alone = pd.concat(
        [
            model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 10})
            for user in [*active, "never-seen"]
        ],
        ignore_index=True,
    )
    columns = ["user_id", "rank", "item_id", "score", "source"]
    pd.testing.assert_frame_equal(answer[columns], alone[columns])
    # Known users: the ranker's order of the merged candidates, the ANN source among them.
    everything = {"two_tower", "covisitation", "popularity", "category_popularity", "linear"}
    assert all(sources[user] <= everything for user in active)
    from components.ranking.model import TwoStageModel

    served = TwoStageModel.load(rewear_home / "runs" / result["run_id"] / "bundle" / "two_stage")
    assert "two_tower" in [source.name for source in served.stack.sources]
    assert served.stack.candidates(active)["rank_two_tower"].notna().any()
    assert sources["never-seen"] == {"popularity_fallback"}
    sold = set(tables.items.loc[tables.items["sold_at"].notna(), "item_id"])
    assert not sold & set(answer["item_id"])


@pytest.mark.slow
def test_without_the_ranker_the_sources_fusion_is_registered_and_tagged_so(
    rewear_home, registry_client
):
    from flows.retrain import retrain

    overrides = {
        **SMALL_MARKET,
        "model.candidates.sources": ["covisitation", "popularity"],
        "model.ranker.enabled": False,
    }
    result = retrain(config_path=str(REPO / "configs" / "synthetic.yaml"), overrides=overrides)
    assert result["status"] == "completed"
    assert result["recommender"] == {
        "kind": "retrieval_fusion",
        "sources": ["covisitation", "popularity"],
        "ranker": None,
    }
    # No encoder, no index, no ranker: none of their stages ran.
    assert not {"train_encoder", "build_index", "train_ranker"} & set(result["timings_s"])
    assert "retrieval_only" not in result["baselines"]  # the model is the fusion itself
    version = registry_client.get_model_version_by_alias("rewear", "champion")
    assert version.tags["model"] == "retrieval_fusion: covisitation+popularity"
    assert version.tags["model.ranker"] == "none"


@pytest.mark.slow
def test_the_same_snapshot_retrained_from_scratch_gives_identical_metrics(rewear_home):
    """Epochs and early stopping decide training, not the clock: the second run recomputes
    every stage (Prefect's cache refreshed) and lands on the same figures."""
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from flows.retrain import retrain

    config = str(REPO / "configs" / "synthetic.yaml")
    first = retrain(config_path=config, overrides=SMALL_MARKET)
    with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
        second = retrain(config_path=config, overrides=SMALL_MARKET)
    assert second["snapshot_id"] == first["snapshot_id"]
    assert second["model"]["version"] == first["model"]["version"] + 1
    # Recomputed, not read from the first run's stage records: the epochs' times differ.
    times = [[e["total_s"] for e in r["retrieval"]["encoder_epochs"]] for r in (first, second)]
    assert times[0] != times[1]
    assert second["metrics"] == first["metrics"]
    assert second["valid_metrics"] == first["valid_metrics"]
    assert first["warnings"] == second["warnings"] == []
