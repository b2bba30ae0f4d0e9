"""The ranking stage end to end on a small synthetic marketplace: label-stage data, the
LightGBM ranker, the assembled two-stage model, and the training/serving feature parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.config import PipelineConfig, TwoTowerConfig
from components.data.split import DataSplit, write_split
from components.evaluation.encoder_validation import encoder_validation
from components.evaluation.suite import evaluate_models
from components.pipeline import ranking_steps
from components.pipeline.ranking_steps import encoder_before
from components.ranking.dataset import QUERY_KEYS, QueryGroups, query_group_rows
from components.ranking.label_stages import label_stage, label_stages
from components.ranking.model import TwoStageModel, retrieval_only
from components.ranking.ranker import (
    SINGLE_THREAD_ROWS,
    RankerEnsemble,
    RankingMatrix,
    TrainedRanker,
    category_codes,
    load_ranker,
    read_ranking_matrices,
    train_ranker,
)
from components.retrieval.stack import RetrievalStack
from components.retrieval.two_tower_training import train_two_tower_stages
from tests.components.ranking.conftest import assembled, ranking_data


@pytest.fixture(scope="module")
def trained(
    small_split: DataSplit, small_config: PipelineConfig, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    run_dir = tmp_path_factory.mktemp("ranking-run")
    write_split(small_split, run_dir / "split")
    split_uri = str(run_dir / "split")
    data = ranking_data(split_uri, small_config, run_dir)
    ranker = ranking_steps.train_ranker(data["uri"], small_config.model.ranker, run_dir)
    model = assembled(split_uri, ranker["uri"], small_config, run_dir)
    return {
        "run_dir": run_dir,
        "split_uri": split_uri,
        "data": data,
        "ranker": ranker,
        "model_uri": model["uri"],
    }


def test_label_features_built_in_user_chunks_are_the_same_file_content(
    trained: dict, small_config: PipelineConfig, tmp_path: Path
) -> None:
    """Chunks bound the memory of the label stage and change no row, value or figure."""
    candidates = small_config.model.candidates.model_copy(update={"chunk_users": 7})
    chunked_config = small_config.model_copy(
        update={"model": small_config.model.model_copy(update={"candidates": candidates})}
    )
    chunked = ranking_data(trained["split_uri"], chunked_config, tmp_path)
    whole = trained["data"]
    pd.testing.assert_frame_equal(pd.read_parquet(chunked["uri"]), pd.read_parquet(whole["uri"]))
    assert pq.ParquetFile(chunked["uri"]).num_row_groups > 10
    figures = {k: v for k, v in chunked["figures"].items() if k != "seconds"}
    assert figures == {k: v for k, v in whole["figures"].items() if k != "seconds"}


def test_label_data_sits_before_the_valid_window(trained: dict, small_split: DataSplit) -> None:
    data = trained["data"]
    assert data["figures"]["label_moment"] == small_split.valid_cutoff.isoformat()
    frame = pd.read_parquet(data["uri"])
    assert data["figures"]["rows"] == len(frame) and frame["label"].max() >= 1
    # Labels are valid-window pairs only; no test-window pair is labelled.
    labelled = frame[frame["label"] > 0][["user_id", "item_id"]]
    valid_pairs = set(zip(small_split.valid["user_id"], small_split.valid["item_id"], strict=True))
    assert all(pair in valid_pairs for pair in labelled.itertuples(index=False, name=None))


def test_ranker_trains_with_early_stopping_and_reports_importance(trained: dict) -> None:
    ranker = trained["ranker"]
    assert 1 <= ranker["figures"]["best_iteration"] <= 60
    assert ranker["figures"]["early_stopping_queries"] > 0 and ranker["figures"]["fit_queries"] > 0
    assert len(ranker["curves"]["early_stopping.ndcg@10"]) >= ranker["figures"]["best_iteration"]
    assert sum(ranker["importance"].values()) > 0


def test_reranked_model_beats_retrieval_only_on_the_test_window(
    trained: dict, small_split: DataSplit, small_config: PipelineConfig
) -> None:
    model = TwoStageModel.load(Path(trained["model_uri"]))
    scorers = {"model": model, "retrieval_only": retrieval_only(model)}
    suite = evaluate_models("model", scorers, small_split, "test", small_config.evaluation)
    reranked = suite.model.metrics["ndcg@10"]
    fusion = suite.baselines["retrieval_only"].metrics["ndcg@10"]
    assert reranked > fusion > 0


def test_served_features_equal_the_training_features(
    trained: dict, small_split: DataSplit, small_config: PipelineConfig, tmp_path: Path
) -> None:
    """Parity: the same (user, item, moment) through the training path (label-stage parquet)
    and through a saved-then-loaded two-stage model, as the served bundle loads it."""
    stage = label_stage(small_split, small_config.model.ranker)
    stack = RetrievalStack.fit(
        stage.history,
        small_split.tables.items,
        stage.moment,
        stage.available,
        small_config.model.candidates,
        small_config.evaluation.excluded_events,
    )
    ranker = TrainedRanker.load(Path(trained["ranker"]["uri"]))
    TwoStageModel.assemble(stack, ranker, small_config.model.ranker).save(tmp_path / "served")
    served = TwoStageModel.load(tmp_path / "served")
    training = pd.read_parquet(trained["data"]["uri"]).drop(columns=["label", "label_window"])
    users = sorted(training["user_id"].unique())[:25]
    got = served.candidate_features(users)
    want = training[training["user_id"].isin(users)]
    keys = ["user_id", "item_id"]
    got = got.sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    assert len(got) == len(want) > 0
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
    np.testing.assert_allclose(ranker.predict(got), ranker.predict(want))


def test_rank_returns_available_unbought_items_with_their_source(
    trained: dict, small_split: DataSplit
) -> None:
    model = TwoStageModel.load(Path(trained["model_uri"]))
    history = small_split.history("test")
    buyers = history[history["event"] == "purchase"]["user_id"].unique()[:5].tolist()
    ranked = model.rank(buyers, k=10)
    assert ranked.groupby("user_id").size().max() <= 10
    assert set(ranked["user_id"]) <= set(buyers)
    purchases = history[history["event"] == "purchase"]
    bought = set(zip(purchases["user_id"], purchases["item_id"], strict=True))
    answered = zip(ranked["user_id"], ranked["item_id"], strict=True)
    assert not any(pair in bought for pair in answered)
    available = small_split.tables.items.loc[
        small_split.available_items(small_split.test_cutoff).to_numpy(bool), "item_id"
    ]
    assert set(ranked["item_id"]) <= set(available.astype(str))
    assert set(ranked["source"]) <= {"covisitation", "popularity", "category_popularity", "linear"}
    for _, rows in ranked.groupby("user_id"):
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
        assert rows["score"].is_monotonic_decreasing


def test_one_users_answer_does_not_depend_on_the_batch(
    trained: dict, small_split: DataSplit
) -> None:
    """The served model ranks one user per request; offline evaluation ranks thousands at
    once. Both must give each user the same items, order, scores and sources."""
    model = TwoStageModel.load(Path(trained["model_uri"]))
    users = small_split.history("test")["user_id"].astype(str).unique()[:40].tolist()
    batch = model.rank([*users, "nobody"], k=25)
    assert batch["user_id"].unique().tolist() == [*users, "nobody"]  # request order
    for user in [*users[::7], "nobody"]:  # a user without history gets popular items
        alone = model.ranked([user], k=25)
        want = batch[batch["user_id"] == user]
        assert alone.item_ids.tolist() == want["item_id"].tolist()
        assert alone.sources.tolist() == want["source"].tolist()
        assert alone.ranks.tolist() == list(range(1, len(want) + 1))
        np.testing.assert_allclose(alone.scores, want["score"].to_numpy())


def test_prediction_from_columns_equals_prediction_from_the_frame(trained: dict) -> None:
    """`predict_columns` (the per-request path, one thread) and `predict` on a frame (the
    batch path, OpenMP above SINGLE_THREAD_ROWS rows) give the same scores."""
    ranker = TrainedRanker.load(Path(trained["ranker"]["uri"]))
    frame = pd.read_parquet(trained["data"]["uri"])
    frame = pd.concat([frame] * (1 + SINGLE_THREAD_ROWS // max(1, len(frame))), ignore_index=True)
    assert len(frame) > SINGLE_THREAD_ROWS
    columns = {name: frame[name].to_numpy(dtype=object) for name in ("i_category", "i_condition")}
    columns |= {
        name: frame[name].to_numpy(dtype=float)
        for name in ranker.feature_names
        if name not in columns
    }
    many = ranker.predict(frame)
    np.testing.assert_allclose(ranker.predict_columns(columns, len(frame)), many)
    head = {name: values[:50] for name, values in columns.items()}
    np.testing.assert_allclose(ranker.predict_columns(head, 50), many[:50])
    # A feature the caller lacks is unknown, not an error.
    del head[ranker.feature_names[0]]
    assert np.isfinite(ranker.predict_columns(head, 50)).all()


def test_category_codes_are_vocabulary_positions_and_unknown_values_are_nan() -> None:
    vocabulary = ["bags", "shoes", "tops"]
    values = np.array(["shoes", "hats", None, np.nan, "bags", "tops", "shoes"], dtype=object)
    codes = category_codes(values, vocabulary)
    np.testing.assert_array_equal(codes, [1, np.nan, np.nan, np.nan, 0, 2, 1])
    categorical = pd.Categorical(values, categories=vocabulary)
    np.testing.assert_array_equal(category_codes(pd.Series(categorical), vocabulary), codes)
    # Another vocabulary gives other codes (the lookup is kept per vocabulary).
    np.testing.assert_array_equal(category_codes(values[:2], ["hats", "shoes"]), [1, 0])


def test_training_is_deterministic(
    trained: dict, small_config: PipelineConfig, tmp_path: Path
) -> None:
    again = ranking_steps.train_ranker(trained["data"]["uri"], small_config.model.ranker, tmp_path)
    frame = pd.read_parquet(trained["data"]["uri"]).head(500)
    first = TrainedRanker.load(Path(trained["ranker"]["uri"])).predict(frame)
    second = TrainedRanker.load(Path(again["uri"])).predict(frame)
    np.testing.assert_array_equal(first, second)


def test_an_ensemble_averages_rankers_trained_with_consecutive_seeds(
    trained: dict, small_split: DataSplit, small_config: PipelineConfig, tmp_path: Path
) -> None:
    ranker_config = small_config.model.ranker.model_copy(update={"ensemble_size": 3})
    config = small_config.model_copy(
        update={"model": small_config.model.model_copy(update={"ranker": ranker_config})}
    )
    step = ranking_steps.train_ranker(trained["data"]["uri"], config.model.ranker, tmp_path)
    figures = step["figures"]
    assert figures["ensemble_size"] == 3 and len(figures["member_best_iterations"]) == 3
    ensemble = load_ranker(Path(step["uri"]))
    assert isinstance(ensemble, RankerEnsemble) and len(ensemble.members) == 3
    # Member 0 is the single ranker of the same seed.
    frame = pd.read_parquet(trained["data"]["uri"]).head(400)
    single = TrainedRanker.load(Path(trained["ranker"]["uri"]))
    np.testing.assert_array_equal(ensemble.members[0].predict(frame), single.predict(frame))
    each = np.array([member.predict(frame) for member in ensemble.members])
    assert not np.allclose(each[0], each[1])  # other early-stopping users, other negatives
    np.testing.assert_allclose(ensemble.predict(frame), each.mean(axis=0))
    assert figures["training_s"] == pytest.approx(sum(m.training_s for m in ensemble.members))
    # The two-stage model saves and loads it, and ranks with it.
    model = assembled(trained["split_uri"], step["uri"], config, tmp_path)
    loaded = TwoStageModel.load(Path(model["uri"]))
    assert isinstance(loaded.ranker, RankerEnsemble)
    users = small_split.history("test")["user_id"].astype(str).unique()[:5].tolist()
    ranked = loaded.rank(users, k=10)
    assert (
        len(ranked)
        and ranked.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    )


def test_prediction_uses_the_trained_categories_whatever_the_callers_order(trained: dict) -> None:
    ranker = TrainedRanker.load(Path(trained["ranker"]["uri"]))
    frame = pd.read_parquet(trained["data"]["uri"]).head(300)
    shuffled = frame.copy()
    categories = list(frame["i_category"].cat.categories)
    shuffled["i_category"] = pd.Categorical(
        frame["i_category"].astype(object), categories=categories[::-1]
    )
    np.testing.assert_allclose(ranker.predict(shuffled), ranker.predict(frame))


def test_label_windows_tile_the_time_before_the_test_cut_off(
    small_split: DataSplit, small_config: PipelineConfig
) -> None:
    config = small_config.model_copy(
        update={
            "model": small_config.model.model_copy(
                update={"ranker": small_config.model.ranker.model_copy(update={"label_windows": 3})}
            )
        }
    )
    stages = label_stages(small_split, config.model.ranker)
    assert len(stages) == 3
    assert stages[0].moment == small_split.valid_cutoff
    length = small_split.test_cutoff - small_split.valid_cutoff
    for number, stage in enumerate(stages):
        assert stage.moment == small_split.valid_cutoff - number * length
        # Every label lies at or after the stage's moment, every feature input before it.
        assert stage.history["ts"].max() < stage.moment <= stage.window["ts"].min()
        assert stage.window["ts"].max() < stage.moment + length
        assert (stage.window["ts"] < small_split.test_cutoff).all()


def test_an_earlier_label_window_gets_an_encoder_that_never_saw_its_labels(
    small_split: DataSplit,
) -> None:
    tower = TwoTowerConfig(
        embedding_dim=8, feature_dim=4, hidden_dim=16, extra_negatives=16, max_epochs=2
    )
    validation = encoder_validation(small_split, tower)
    chosen = train_two_tower_stages(small_split, tower, "test", validation=validation)[0]
    epochs = [r for r in chosen.epochs if r["phase"] == "fit"]
    best = max(epochs, key=lambda r: r["valid_recall@20"])["epoch"]
    length = small_split.test_cutoff - small_split.valid_cutoff
    moment = small_split.valid_cutoff - length
    history = small_split.train[small_split.train["ts"] < moment]
    own = encoder_before(small_split, history, moment, tower, chosen)
    assert own.as_of == moment  # fitted strictly before its label window
    assert len(own.epochs) == best and own.epochs[-1]["phase"] == "fit"


def test_remembered_candidates_change_no_score(trained: dict, small_split: DataSplit) -> None:
    model = TwoStageModel.load(Path(trained["model_uri"]))
    fusion = retrieval_only(model)
    users = sorted(small_split.test["user_id"].unique())[:30]
    items = list(small_split.tables.items["item_id"].astype(str))
    fresh = (model.score(users, items), fusion.score(users, items))
    with model.stack.remembering_candidates():
        first = model.stack.candidate_arrays(users)
        assert model.stack.candidate_arrays(users) is first  # generated once per batch
        remembered = (model.score(users, items), fusion.score(users, items))
    assert model.stack.candidate_arrays(users) is not first  # off again outside
    np.testing.assert_array_equal(remembered[0], fresh[0])
    np.testing.assert_array_equal(remembered[1], fresh[1])


def test_ranking_matrices_read_from_the_file_equal_the_frames_they_replace(
    trained: dict, small_config: PipelineConfig, tmp_path: Path
) -> None:
    """The ranker stage reads its rows straight into matrices, a row group at a time; they
    hold what the query-group frames would, and train the same ranker."""
    frame = pd.read_parquet(trained["data"]["uri"])
    uri = tmp_path / "features.parquet"
    pq.write_table(pq.read_table(trained["data"]["uri"]), uri, row_group_size=len(frame) // 5)
    assert pq.ParquetFile(uri).num_row_groups >= 5
    ranker_config = small_config.model.ranker
    keys = frame[[c for c in QUERY_KEYS if c in frame]]
    fit_rows, fit_sizes = query_group_rows(keys, ranker_config, seed=3)
    all_rows, all_sizes = query_group_rows(keys, ranker_config, sample_negatives=False)
    ranker = load_ranker(Path(trained["ranker"]["uri"]))
    names, categories = ranker.feature_names, ranker.categories

    fit, everything = read_ranking_matrices(
        uri, [(fit_rows, fit_sizes), (all_rows, all_sizes)], names, categories
    )

    for matrix, rows, sizes in ((fit, fit_rows, fit_sizes), (everything, all_rows, all_sizes)):
        groups = QueryGroups(frame.take(rows).reset_index(drop=True), sizes)
        expected = RankingMatrix.of(groups, names, categories)
        np.testing.assert_array_equal(matrix.features, expected.features)
        np.testing.assert_array_equal(matrix.labels, expected.labels)
        np.testing.assert_array_equal(matrix.sizes, sizes)
    from_file = train_ranker(fit, everything, names, categories, ranker_config)
    from_frames = train_ranker(
        QueryGroups(frame.take(fit_rows).reset_index(drop=True), fit_sizes),
        QueryGroups(frame.take(all_rows).reset_index(drop=True), all_sizes),
        names,
        categories,
        ranker_config,
    )
    np.testing.assert_array_equal(from_file.predict(frame), from_frames.predict(frame))
