"""The ranking stage's steps (label-stage features, LightGBM training, the assembled
two-stage model) as plain functions over paths and configs, like `components.pipeline.steps`.

Labels always lie after the data their candidates and features see:
- temporal protocol: candidates and features at the valid cut-off T_valid, from the history
  before it (with the two-tower encoder fitted on that history only); labels = the valid
  window's events. The test window is never touched;
- fixed split: a random `ranker.holdout_share` of each user's training interactions is held
  out as labels, the candidate models are fitted without it; at test time they are refitted
  on all of the training data.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from components.config import PipelineConfig, RankerConfig, TwoTowerConfig
from components.data.split import DataSplit, available_at, latest_moment, read_split
from components.pipeline.retrieval_steps import best_epoch
from components.ranking.dataset import (
    QueryGroups,
    attach_labels,
    graded_labels,
    holdout_interactions,
    query_groups,
    split_users,
)
from components.ranking.features import CATEGORICAL_FEATURES, feature_columns
from components.ranking.model import TwoStageModel, feature_builder
from components.ranking.ranker import RankerEnsemble, TrainedRanker, load_ranker, train_ranker
from components.retrieval.ann_index import build_annoy_index
from components.retrieval.candidates import candidate_recall
from components.retrieval.stack import RetrievalStack
from components.retrieval.two_tower import TrainedTwoTower
from components.retrieval.two_tower_training import train_two_tower_stages
from components.store import atomic_directory

TWO_STAGE = "two_stage"
#: Serving moment: one microsecond after the last event, so "strictly before" keeps it.
AFTER_LAST_EVENT = pd.Timedelta(microseconds=1)


@dataclass(frozen=True)
class LabelStage:
    """What the ranker learns from: history before `moment`, labels from `window`."""

    history: pd.DataFrame
    window: pd.DataFrame
    moment: pd.Timestamp | None
    available: np.ndarray


def label_stages(data: DataSplit, config: PipelineConfig) -> list[LabelStage]:
    """The ranker's label stages, latest first (see the module docstring and
    `RankerConfig.label_windows`)."""
    items = data.tables.items
    ranker = config.model.ranker
    if data.protocol != "temporal":
        kept, held = holdout_interactions(data.train, ranker.holdout_share, ranker.seed)
        return [
            LabelStage(
                history=kept, window=held, moment=None, available=np.ones(len(items), dtype=bool)
            )
        ]
    length = data.test_cutoff - data.valid_cutoff
    stages = [
        LabelStage(
            history=data.history("valid"),
            window=data.valid,
            moment=data.valid_cutoff,
            available=data.available_items(data.valid_cutoff).to_numpy(bool),
        )
    ]
    train = data.train
    for step in range(1, ranker.label_windows):
        start = data.valid_cutoff - step * length
        window = train[(train["ts"] >= start) & (train["ts"] < start + length)]
        history = train[train["ts"] < start]
        if window.empty or history.empty:
            break
        stages.append(
            LabelStage(
                history=history,
                window=window,
                moment=start,
                available=data.available_items(start).to_numpy(bool),
            )
        )
    return stages


def label_stage(data: DataSplit, config: PipelineConfig) -> LabelStage:
    """The latest label stage (the valid window, or the fixed split's holdout)."""
    return label_stages(data, config)[0]


def build_ranking_data(
    split_uri: str, train_window_encoder_uri: str | None, config: PipelineConfig, run_dir: Path
) -> dict[str, Any]:
    """Candidates, features and graded labels of the label stage, as one parquet file.

    The two-tower source and the embedding features use an encoder that never saw the
    stage's labels: for the latest stage the one fitted before the valid window (temporal)
    or on what the holdout keeps of the train file (fixed split;
    `retrieval_steps.train_label_stage_encoders`); each earlier label window gets its own,
    fitted on the history before it for as many epochs as that one chose.
    """
    started = time.perf_counter()
    data = read_split(Path(split_uri))
    stages = label_stages(data, config)
    ranker = config.model.ranker
    target = Path(run_dir) / "ranking"
    latest_encoder = None
    if train_window_encoder_uri is not None:
        latest_encoder = TrainedTwoTower.load(Path(train_window_encoder_uri))
    frames, recalls, users = [], [], 0
    with atomic_directory(target, overwrite=True) as staging:
        for number, stage in enumerate(stages):
            encoder, index_folder = latest_encoder, None
            if latest_encoder is not None and number > 0:
                encoder = encoder_before(
                    data, stage.history, stage.moment, config.model.two_tower, latest_encoder
                )
            if encoder is not None:
                listings = data.tables.items[stage.available]
                index_folder = staging / "label_index"
                build_annoy_index(
                    encoder.embed_items(listings, stage.moment),
                    listings["item_id"].astype(str).tolist(),
                    config.model.annoy,
                    index_folder,
                )
            stack = RetrievalStack.fit(
                stage.history,
                data.tables.items,
                stage.moment,
                stage.available,
                config,
                encoder=encoder,
                index_folder=index_folder,
            )
            labels = graded_labels(stage.window, ranker)
            stage_users = labels["user_id"].drop_duplicates().tolist()
            candidates = stack.candidates(stage_users)
            recalls.append(candidate_recall(candidates, stage.window, config.model.candidates.n))
            features = attach_labels(feature_builder(stack, ranker).transform(candidates), labels)
            frames.append(features.assign(label_window=np.int32(number)))
            users += len(stage_users)
        features = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        features.to_parquet(staging / "label_features.parquet", index=False)
    positives = features["label"].gt(0).groupby([features["label_window"], features["user_id"]])
    latest = stages[0].moment
    return {
        "uri": str(target / "label_features.parquet"),
        "rows": len(features),
        "label_windows": len(stages),
        "queries": users,
        "queries_with_positive_candidate": int(positives.any().sum()),
        "label_candidate_recall": round(float(recalls[0].get("combined", np.nan)), 4),
        "label_moment": None if latest is None else latest.isoformat(),
        "seconds": round(time.perf_counter() - started, 2),
    }


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


def train_ranker_step(features_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the LightGBM ranker on the label-stage users, early-stopped on a held-out part;
    with `ensemble_size` > 1, that many rankers with consecutive seeds, averaged."""
    ranker_config = config.model.ranker
    frame = pd.read_parquet(features_uri)
    names = [c for c in feature_columns(frame) if frame[c].notna().any()]
    categories = feature_builder_categories(frame)
    members: list[TrainedRanker] = []
    for offset in range(ranker_config.ensemble_size):
        seeded = ranker_config.model_copy(update={"seed": ranker_config.seed + offset})
        member, fit, stop = _train_one_ranker(frame, names, categories, seeded)
        members.append(member)
        if offset == 0:
            first_fit, first_stop = fit, stop
    trained = members[0] if len(members) == 1 else RankerEnsemble(members)
    target = Path(run_dir) / "models" / "ranker"
    with atomic_directory(target, overwrite=True) as staging:
        trained.save(staging)
    metric = f"early_stopping.ndcg@{ranker_config.eval_at}"
    stopped_at = [
        round(m.curves[metric][m.best_iteration - 1], 4) if m.curves.get(metric) else None
        for m in members
    ]
    return {
        "uri": str(target),
        "fit_rows": len(first_fit.frame),
        "fit_queries": first_fit.n_queries,
        "early_stopping_queries": first_stop.n_queries,
        "ensemble_size": len(members),
        "best_iteration": members[0].best_iteration,
        "member_best_iterations": [m.best_iteration for m in members],
        f"early_stopping_ndcg@{ranker_config.eval_at}": stopped_at[0],
        f"member_early_stopping_ndcg@{ranker_config.eval_at}": stopped_at,
        "training_s": trained.training_s,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "importance": {k: round(v, 2) for k, v in list(trained.importance().items())[:15]},
        "curves": trained.curves,
    }


def _train_one_ranker(
    frame: pd.DataFrame,
    names: list[str],
    categories: dict[str, list[str]],
    ranker_config: RankerConfig,
) -> tuple[TrainedRanker, QueryGroups, QueryGroups]:
    """One ranker: its seed picks the early-stopping users and the fit's negatives."""
    fit_users, _ = split_users(
        frame["user_id"], ranker_config.early_stopping_user_share, ranker_config.seed
    )
    in_fit = frame["user_id"].isin(fit_users).to_numpy()
    fit = query_groups(frame[in_fit], ranker_config, seed=ranker_config.seed)
    stop = query_groups(
        frame[~in_fit], ranker_config, seed=ranker_config.seed, sample_negatives=False
    )
    if ranker_config.dask_address is not None:
        from components.ranking.distributed import train_ranker_on_dask

        return train_ranker_on_dask(fit, stop, names, categories, ranker_config), fit, stop
    return train_ranker(fit, stop, names, categories, ranker_config), fit, stop


def assemble_two_stage(
    split_uri: str,
    encoder_uri: str | None,
    index_uri: str | None,
    ranker_uri: str | None,
    config: PipelineConfig,
    run_dir: Path,
    purpose: Literal["evaluation", "serving"] = "evaluation",
) -> dict[str, Any]:
    """The two-stage model at the test cut-off (what evaluation scores) or at the end of the
    data (what gets registered), saved under run_dir/models/two_stage_<purpose>."""
    data = read_split(Path(split_uri))
    items = data.tables.items
    encoder = None if encoder_uri is None else TrainedTwoTower.load(Path(encoder_uri))
    index_folder = Path(index_uri) if encoder is not None and index_uri else None
    ranker = None if ranker_uri is None else load_ranker(Path(ranker_uri))
    if purpose == "evaluation":
        model = two_stage_at(
            data.history("test"),
            items,
            data.test_cutoff,
            data.available_items(data.test_cutoff).to_numpy(bool),
            config,
            ranker,
            encoder=encoder,
            index_folder=index_folder,
        )
    else:
        history = data.serving_history()
        model = serving_two_stage(
            history, items, config, ranker, encoder=encoder, index_folder=index_folder
        )
    target = Path(run_dir) / "models" / f"two_stage_{purpose}"
    with atomic_directory(target, overwrite=True) as staging:
        model.save(staging)
    return {"uri": str(target)}


def serving_two_stage(
    history: pd.DataFrame,
    items: pd.DataFrame,
    config: PipelineConfig,
    ranker: TrainedRanker | RankerEnsemble | None,
    *,
    encoder: TrainedTwoTower | None = None,
    index_folder: Path | None = None,
) -> TwoStageModel:
    """The two-stage model just after the last event of `history`, over the listings
    available then: what a retrain registers, and what an index refresh rebuilds around the
    champion's ranker (and encoder) from newer data."""
    latest = latest_moment(history, items)
    return two_stage_at(
        history,
        items,
        None if latest is None else latest + AFTER_LAST_EVENT,
        available_at(items, latest).to_numpy(bool),
        config,
        ranker,
        encoder=encoder,
        index_folder=index_folder,
    )


def two_stage_at(
    history: pd.DataFrame,
    items: pd.DataFrame,
    moment: pd.Timestamp | None,
    available: np.ndarray,
    config: PipelineConfig,
    ranker: TrainedRanker | RankerEnsemble | None,
    *,
    encoder: TrainedTwoTower | None = None,
    index_folder: Path | None = None,
) -> TwoStageModel:
    """The retrieval stack fitted on `history` before `moment` over the `available`
    listings, with `ranker` (None: fusion order) on features at that moment."""
    stack = RetrievalStack.fit(
        history, items, moment, available, config, encoder=encoder, index_folder=index_folder
    )
    return TwoStageModel.assemble(stack, ranker, config.model.ranker)


def retrieval_only(model: TwoStageModel) -> TwoStageModel:
    """The same candidates ranked by their fusion score: what the ranker must beat."""
    return TwoStageModel(stack=model.stack, features=model.features, ranker=None)
