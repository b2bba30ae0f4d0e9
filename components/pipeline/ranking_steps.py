"""The ranking phase's steps: label-stage features (`components.ranking.label_stages` says
which history and labels), LightGBM training, and the assembled two-stage model at the
test cut-off (evaluation) or at the end of the data (serving). Plain functions over paths,
like `components.pipeline.data_steps`.
"""

from __future__ import annotations

import resource
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.config import ExecutionConfig, ModelConfig, RankerConfig, TwoTowerConfig
from components.data.split import DataSplit, read_split
from components.pipeline.results import ModelResult, RankerResult, RankingDataResult
from components.pipeline.retrieval_steps import best_epoch
from components.pipeline.sharding import (
    RecallSums,
    Shard,
    ShardedStep,
    chunk_starts,
    concatenate_parts,
    publish_shard,
    shard_folder,
    shard_ranges,
    where_it_ran,
)
from components.ranking.dataset import (
    QUERY_KEYS,
    QueryGroups,
    attach_labels,
    graded_labels,
    query_group_rows,
    split_users,
)
from components.ranking.features import CATEGORICAL_FEATURES, feature_columns
from components.ranking.label_stages import LabelStage, label_stages
from components.ranking.model import (
    TwoStageModel,
    feature_builder,
    serving_two_stage,
    two_stage_at,
)
from components.ranking.ranker import (
    RankerEnsemble,
    TrainedRanker,
    load_ranker,
    read_ranking_matrices,
)
from components.ranking.ranker import (
    train_ranker as fit_ranker,
)
from components.retrieval.ann_index import build_annoy_index
from components.retrieval.candidate_recall import candidate_recall
from components.retrieval.stack import RetrievalStack
from components.retrieval.two_tower import TrainedTwoTower
from components.retrieval.two_tower_training import train_two_tower_stages
from components.store import (
    ParquetAppender,
    atomic_directory,
    columns_with_values,
    read_parquet_rows,
)


def _stage_users(stage: LabelStage, ranker: RankerConfig) -> tuple[pd.DataFrame, list[str]]:
    """A label stage's graded labels and its users (in the labels' order)."""
    labels = graded_labels(stage.window, ranker)
    return labels, labels["user_id"].drop_duplicates().tolist()


def plan_ranking_data(
    split_uri: str,
    train_window_encoder_uri: str | None,
    model: ModelConfig,
    exclude_events: tuple[str, ...] | None,
    execution: ExecutionConfig,
    run_dir: Path,
) -> dict[str, Any]:
    """Per label stage: its encoder (an earlier window's own, trained here), its Annoy index
    and its retrieval stack, saved for the shards; the stage's users cut into shards of
    whole chunks, numbered across stages (latest stage first: the rows' order)."""
    started = time.perf_counter()
    data = read_split(Path(split_uri))
    stages = label_stages(data, model.ranker)
    latest_encoder = None
    if train_window_encoder_uri is not None:
        latest_encoder = TrainedTwoTower.load(Path(train_window_encoder_uri))
    stacks: list[str] = []
    shards: list[Shard] = []
    for number, stage in enumerate(stages):
        encoder = latest_encoder
        if latest_encoder is not None and number > 0:
            encoder = encoder_before(
                data, stage.history, stage.moment, model.two_tower, latest_encoder
            )
        target = Path(run_dir) / "ranking_stacks" / f"{number:02d}"
        with atomic_directory(target, overwrite=True) as staging:
            index_folder = None
            if encoder is not None:
                listings = data.tables.items[stage.available]
                index_folder = staging / "label_index"
                build_annoy_index(
                    encoder.embed_items(listings, stage.moment),
                    listings["item_id"].astype(str).tolist(),
                    model.annoy,
                    index_folder,
                )
            stack = RetrievalStack.fit(
                stage.history,
                data.tables.items,
                stage.moment,
                stage.available,
                model.candidates,
                exclude_events,
                encoder=encoder,
                index_folder=index_folder,
            )
            stack.save(staging / "stack")
            if index_folder is not None:
                shutil.rmtree(index_folder)  # the stack keeps its own copy
        stacks.append(str(target / "stack"))
        _, stage_users = _stage_users(stage, model.ranker)
        for shard in shard_ranges(
            len(stage_users),
            execution.shard_users,
            model.candidates.chunk_users,
            label_stage=number,
        ):
            shards.append({**shard, "number": len(shards)})
    latest = stages[0].moment
    return {
        "stacks": stacks,
        "shards": shards,
        "label_moment": None if latest is None else latest.isoformat(),
        "seconds": time.perf_counter() - started,
    }


def ranking_data_shard(
    split_uri: str,
    train_window_encoder_uri: str | None,
    model: ModelConfig,
    exclude_events: tuple[str, ...] | None,
    execution: ExecutionConfig,
    plan: dict[str, Any],
    shard: Shard,
    run_dir: Path,
) -> dict[str, Any]:
    """One shard of a label stage's users: candidates from the stage's stack, features and
    labels, a chunk at a time (features are per user and item: chunks change no value),
    into its own parquet part; rows, users with a positive candidate and, on the latest
    stage, its chunks' candidate recall figures."""
    started = time.perf_counter()
    data = read_split(Path(split_uri))
    ranker = model.ranker
    number = shard["label_stage"]
    stage = label_stages(data, ranker)[number]
    stack = RetrievalStack.load(Path(plan["stacks"][number]))
    labels, stage_users = _stage_users(stage, ranker)
    builder = feature_builder(stack, ranker)
    window_users = stage.window["user_id"].astype(str)
    chunk_users = model.candidates.chunk_users
    rows = with_positive = 0
    chunks: list[dict[str, Any]] = []
    with (
        publish_shard(run_dir, "build_features", shard) as staging,
        ParquetAppender(staging / "label_features.parquet") as writer,
    ):
        for start in chunk_starts(shard, chunk_users):
            chunk = stage_users[start : min(start + chunk_users, shard["stop"])]
            candidates = stack.candidates(chunk)
            if number == 0:
                positives = stage.window[window_users.isin(chunk).to_numpy()]
                chunks.append(
                    {
                        "users": int(positives["user_id"].nunique()),
                        "recall": candidate_recall(candidates, positives, model.candidates.n),
                    }
                )
            features = attach_labels(builder.transform(candidates), labels)
            features = features.assign(label_window=np.int32(number))
            writer.write(features)
            rows += len(features)
            with_positive += int(features.loc[features["label"] > 0, "user_id"].nunique())
    folder = shard_folder(run_dir, "build_features", shard)
    return {
        "uri": str(folder / "label_features.parquet"),
        "folder": str(folder),
        "rows": rows,
        "users": shard["stop"] - shard["start"],
        "with_positive": with_positive,
        "recall_chunks": chunks,
        "seconds": time.perf_counter() - started,
        "ran_on": where_it_ran(),
    }


def combine_ranking_data(
    split_uri: str,
    train_window_encoder_uri: str | None,
    model: ModelConfig,
    exclude_events: tuple[str, ...] | None,
    execution: ExecutionConfig,
    plan: dict[str, Any],
    parts: list[dict[str, Any]],
    run_dir: Path,
) -> RankingDataResult:
    """The shards' parts as one `ranking/label_features.parquet`, in shard order (stage by
    stage, users in order: the rows of one loop), and their figures added up."""
    target = Path(run_dir) / "ranking"
    with atomic_directory(target, overwrite=True) as staging:
        concatenate_parts([Path(part["uri"]) for part in parts], staging / "label_features.parquet")
    recall = RecallSums()
    for part in parts:
        recall.replay(part["recall_chunks"])
    figures = {
        "rows": sum(part["rows"] for part in parts),
        "label_windows": len(plan["stacks"]),
        "queries": sum(part["users"] for part in parts),
        "queries_with_positive_candidate": sum(part["with_positive"] for part in parts),
        "label_candidate_recall": recall.result().get("combined"),
        "label_moment": plan["label_moment"],
        "seconds": round(plan["seconds"] + sum(part["seconds"] for part in parts), 2),
    }
    return {"uri": str(target / "label_features.parquet"), "figures": figures}


#: The label-stage features as plan -> shards -> combine (components.pipeline.sharding).
#: Candidates, features and graded labels of the label stages, as one parquet file, as
#: plan -> shards -> combine. The two-tower source and the embedding features use an
#: encoder that never saw the stage's labels: for the latest stage the one fitted before
#: the valid window (temporal) or on what the holdout keeps of the train file (fixed split;
#: `retrieval_steps.train_label_stage_encoders`); each earlier label window gets its own,
#: fitted on the history before it for as many epochs as that one chose.
build_features = ShardedStep(
    "build_features", plan_ranking_data, ranking_data_shard, combine_ranking_data
)


def encoder_before(
    data: DataSplit,
    history: pd.DataFrame,
    moment: pd.Timestamp | None,
    config: TwoTowerConfig,
    chosen: TrainedTwoTower,
) -> TrainedTwoTower:
    """An encoder fitted on `history` before `moment` for the epochs `chosen` was
    early-stopped at (an earlier label window's own encoder: it never saw its labels)."""
    empty = history.iloc[:0]
    before = replace(
        data, train=history, valid=empty, test=empty, valid_cutoff=moment, test_cutoff=moment
    )
    epochs = best_epoch([r for r in chosen.epochs if r.get("phase", "fit") == "fit"])
    tower = config.model_copy(update={"max_epochs": epochs})
    return train_two_tower_stages(before, tower, "valid", validation=None)[0]


def feature_builder_categories(features: pd.DataFrame) -> dict[str, list[str]]:
    return {
        name: [str(c) for c in features[name].cat.categories]
        for name in CATEGORICAL_FEATURES
        if name in features and isinstance(features[name].dtype, pd.CategoricalDtype)
    }


def train_ranker(features_uri: str, ranker: RankerConfig, run_dir: Path) -> RankerResult:
    """Fit the LightGBM ranker on the label-stage users, early-stopped on a held-out part;
    with `ensemble_size` > 1, that many rankers with consecutive seeds, averaged. The rows
    each ranker trains on are chosen on the query keys alone, then only those are read."""
    ranker_config = ranker
    parquet = pq.ParquetFile(features_uri)
    columns = parquet.schema_arrow.names
    keys = pd.read_parquet(features_uri, columns=[c for c in QUERY_KEYS if c in columns])
    candidates = feature_columns(pd.DataFrame(columns=columns))
    names = columns_with_values(Path(features_uri), candidates)
    categorical = [c for c in CATEGORICAL_FEATURES if c in columns]
    categories = feature_builder_categories(pd.read_parquet(features_uri, columns=categorical))
    members: list[TrainedRanker] = []
    for offset in range(ranker_config.ensemble_size):
        seeded = ranker_config.model_copy(update={"seed": ranker_config.seed + offset})
        member, *sizes = _train_one_ranker(features_uri, keys, names, categories, seeded)
        members.append(member)
        if offset == 0:
            fit_rows, fit_queries, stop_queries = sizes
    trained = members[0] if len(members) == 1 else RankerEnsemble(members)
    target = Path(run_dir) / "models" / "ranker"
    with atomic_directory(target, overwrite=True) as staging:
        trained.save(staging)
    metric = f"early_stopping.ndcg@{ranker_config.eval_at}"
    stopped_at = [
        round(m.curves[metric][m.best_iteration - 1], 4) if m.curves.get(metric) else None
        for m in members
    ]
    figures = {
        "fit_rows": fit_rows,
        "fit_queries": fit_queries,
        "early_stopping_queries": stop_queries,
        "ensemble_size": len(members),
        "best_iteration": members[0].best_iteration,
        "member_best_iterations": [m.best_iteration for m in members],
        f"early_stopping_ndcg@{ranker_config.eval_at}": stopped_at[0],
        f"member_early_stopping_ndcg@{ranker_config.eval_at}": stopped_at,
        "training_s": trained.training_s,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    return {
        "uri": str(target),
        "figures": figures,
        "importance": {k: round(v, 2) for k, v in list(trained.importance().items())[:15]},
        "curves": trained.curves,
    }


def _train_one_ranker(
    features_uri: str,
    keys: pd.DataFrame,
    names: list[str],
    categories: dict[str, list[str]],
    ranker_config: RankerConfig,
) -> tuple[TrainedRanker, int, int, int]:
    """One ranker and its (fit rows, fit queries, early-stopping queries): its seed picks
    the early-stopping users and the fit's negatives. The rows are read straight into
    feature matrices (`read_ranking_matrices`); the Dask path reads frames."""
    fit_users, _ = split_users(
        keys["user_id"], ranker_config.early_stopping_user_share, ranker_config.seed
    )
    in_fit = keys["user_id"].isin(fit_users).to_numpy()
    seed = ranker_config.seed
    fit_rows, fit_sizes = query_group_rows(keys[in_fit], ranker_config, seed=seed)
    stop_rows, stop_sizes = query_group_rows(
        keys[~in_fit], ranker_config, seed=seed, sample_negatives=False
    )
    if ranker_config.dask_address is not None:
        from components.ranking.distributed import train_ranker_on_dask

        fit_frame, stop_frame = read_parquet_rows(Path(features_uri), fit_rows, stop_rows)
        fit = QueryGroups(fit_frame, fit_sizes)
        stop = QueryGroups(stop_frame, stop_sizes)
        trained = train_ranker_on_dask(fit, stop, names, categories, ranker_config)
        return trained, len(fit_frame), fit.n_queries, stop.n_queries
    fit_matrix, stop_matrix = read_ranking_matrices(
        Path(features_uri), [(fit_rows, fit_sizes), (stop_rows, stop_sizes)], names, categories
    )
    trained = fit_ranker(fit_matrix, stop_matrix, names, categories, ranker_config)
    return trained, fit_matrix.n_rows, fit_matrix.n_queries, stop_matrix.n_queries


def assemble_two_stage(
    split_uri: str,
    encoder_uri: str | None,
    index_uri: str | None,
    ranker_uri: str | None,
    model: ModelConfig,
    exclude_events: tuple[str, ...] | None,
    run_dir: Path,
    purpose: Literal["evaluation", "serving"] = "evaluation",
    stack_uri: str | None = None,
) -> ModelResult:
    """The two-stage model at the test cut-off (what evaluation scores) or at the end of the
    data (what gets registered), saved under run_dir/models/two_stage_<purpose>. With
    `stack_uri` (the stack that generated the test candidates, fitted at the test cut-off
    already), that stack is loaded instead of being fitted a second time."""
    ranker = None if ranker_uri is None else load_ranker(Path(ranker_uri))
    if stack_uri is not None:
        stack = RetrievalStack.load(Path(stack_uri))
        two_stage = TwoStageModel.assemble(stack, ranker, model.ranker)
    else:
        data = read_split(Path(split_uri))
        items = data.tables.items
        encoder = None if encoder_uri is None else TrainedTwoTower.load(Path(encoder_uri))
        index_folder = Path(index_uri) if encoder is not None and index_uri else None
        if purpose == "evaluation":
            two_stage = two_stage_at(
                data.history("test"),
                items,
                data.test_cutoff,
                data.available_items(data.test_cutoff).to_numpy(bool),
                candidates=model.candidates,
                exclude_events=exclude_events,
                feature_settings=model.ranker,
                ranker=ranker,
                encoder=encoder,
                index_folder=index_folder,
            )
        else:
            two_stage = serving_two_stage(
                data.serving_history(),
                items,
                candidates=model.candidates,
                exclude_events=exclude_events,
                feature_settings=model.ranker,
                ranker=ranker,
                encoder=encoder,
                index_folder=index_folder,
            )
    target = Path(run_dir) / "models" / f"two_stage_{purpose}"
    with atomic_directory(target, overwrite=True) as staging:
        two_stage.save(staging)
    return {"uri": str(target)}


def assemble_serving(
    split_uri: str,
    encoder_uri: str | None,
    index_uri: str | None,
    ranker_uri: str | None,
    model: ModelConfig,
    exclude_events: tuple[str, ...] | None,
    run_dir: Path,
) -> ModelResult:
    """The two-stage model at the end of the data, over the listings available then: what
    gets registered (`assemble_two_stage` for serving)."""
    return assemble_two_stage(
        split_uri=split_uri,
        encoder_uri=encoder_uri,
        index_uri=index_uri,
        ranker_uri=ranker_uri,
        model=model,
        exclude_events=exclude_events,
        run_dir=run_dir,
        purpose="serving",
    )
