"""The LightGBM learning-to-rank model over candidate features.

Trained with `lambdarank` (or `rank_xendcg`) on query groups, early-stopped on the NDCG@K of
users held out of the fit, and saved as LightGBM's own text model plus a JSON sidecar
(feature order, categorical vocabularies, training curves). Categorical features are
declared at training time and take the same vocabularies at prediction time: the booster
file records pandas' categories, and `predict` rebuilds the columns with them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.config import RankerConfig
from components.ranking.dataset import QueryGroups
from components.store import parquet_row_pieces, read_json, write_json

BOOSTER_FILE = "ranker.txt"
META_FILE = "ranker.json"
ENSEMBLE_FILE = "ensemble.json"
#: Predictions of at most this many rows run on one thread (0 above: OpenMP's default).
SINGLE_THREAD_ROWS = 4096


def lightgbm_params(config: RankerConfig) -> dict[str, Any]:
    """LightGBM parameters of a ranker config (deterministic on CPU for a given seed)."""
    return {
        "objective": config.objective,
        "metric": "ndcg",
        "eval_at": [config.eval_at],
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "feature_fraction": config.feature_fraction,
        "bagging_seed": config.seed,
        "feature_fraction_seed": config.seed,
        "seed": config.seed,
        "lambda_l2": config.lambda_l2,
        "num_threads": config.num_threads,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
        "lambdarank_truncation_level": max(20, config.eval_at * 2),
    }


@dataclass
class TrainedRanker:
    booster: lgb.Booster
    feature_names: list[str]
    categories: dict[str, list[str]]
    best_iteration: int
    curves: dict[str, list[float]] = field(default_factory=dict)
    training_s: float = 0.0

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        """Scores for the rows of a `PointInTimeFeatures.transform` frame."""
        return self.predict_columns(_frame_columns(features, self.feature_names), len(features))

    def predict_columns(self, columns: Mapping[str, Any], n_rows: int) -> np.ndarray:
        """Scores for `n_rows` rows given as columns (`PointInTimeFeatures.feature_columns`).

        The matrix is `feature_matrix`'s, as in training (categorical columns as
        codes in the trained vocabularies), without LightGBM's per-call pandas overhead.
        Features absent here (e.g. a source missing at serving time) are unknown (NaN)."""
        if not n_rows:
            return np.zeros(0)
        return self.predict_matrix(
            feature_matrix(columns, n_rows, self.feature_names, self.categories)
        )

    def predict_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Scores for the rows of a `feature_matrix` in this ranker's feature order."""
        # One request's few hundred rows: OpenMP's thread start-up and, on a busy machine,
        # its spinning cost ten times the prediction itself.
        threads = 1 if len(matrix) <= SINGLE_THREAD_ROWS else 0
        return self.booster.predict(
            matrix, num_iteration=self.best_iteration or None, num_threads=threads
        )

    def importance(self) -> dict[str, float]:
        """Total gain per feature, largest first."""
        gains = self.booster.feature_importance(importance_type="gain")
        pairs = sorted(zip(self.feature_names, gains, strict=True), key=lambda p: -p[1])
        return {name: float(gain) for name, gain in pairs}

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / BOOSTER_FILE), num_iteration=self.best_iteration)
        write_json(
            folder / META_FILE,
            {
                "feature_names": self.feature_names,
                "categories": self.categories,
                "best_iteration": self.best_iteration,
                "curves": self.curves,
                "training_s": self.training_s,
            },
        )

    @classmethod
    def load(cls, folder: Path) -> TrainedRanker:
        folder = Path(folder)
        meta = read_json(folder / META_FILE)
        booster = lgb.Booster(model_file=str(folder / BOOSTER_FILE))
        return cls(
            booster=booster,
            feature_names=list(meta["feature_names"]),
            categories={k: list(v) for k, v in meta["categories"].items()},
            best_iteration=int(meta["best_iteration"]),
            curves=meta.get("curves", {}),
            training_s=float(meta.get("training_s", 0.0)),
        )


@dataclass
class RankerEnsemble:
    """Rankers trained with different seeds; a pair's score is the mean of theirs.

    Each member saw its own early-stopping users and negatives, so the mean is a bagged
    ranker: steadier than any one member when the label users number a few hundred."""

    members: list[TrainedRanker]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a ranker ensemble needs at least one member")
        first = self.members[0]
        for member in self.members[1:]:
            if member.feature_names != first.feature_names or (
                member.categories != first.categories
            ):
                raise ValueError("ensemble members must share features and categories")

    @property
    def feature_names(self) -> list[str]:
        return self.members[0].feature_names

    @property
    def categories(self) -> dict[str, list[str]]:
        return self.members[0].categories

    @property
    def best_iteration(self) -> int:
        return self.members[0].best_iteration

    @property
    def curves(self) -> dict[str, list[float]]:
        return self.members[0].curves

    @property
    def training_s(self) -> float:
        return round(sum(member.training_s for member in self.members), 2)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        return self.predict_columns(_frame_columns(features, self.feature_names), len(features))

    def predict_columns(self, columns: Mapping[str, Any], n_rows: int) -> np.ndarray:
        """The members' mean score; the members share one feature matrix."""
        if not n_rows:
            return np.zeros(0)
        matrix = feature_matrix(columns, n_rows, self.feature_names, self.categories)
        return np.mean([member.predict_matrix(matrix) for member in self.members], axis=0)

    def importance(self) -> dict[str, float]:
        """Mean total gain per feature over the members, largest first."""
        totals: dict[str, float] = {}
        for member in self.members:
            for name, gain in member.importance().items():
                totals[name] = totals.get(name, 0.0) + gain / len(self.members)
        return dict(sorted(totals.items(), key=lambda pair: -pair[1]))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        for position, member in enumerate(self.members):
            member.save(folder / f"member-{position}")
        write_json(folder / ENSEMBLE_FILE, {"members": len(self.members)})


def load_ranker(folder: Path) -> TrainedRanker | RankerEnsemble:
    """A saved ranker: one LightGBM model, or an ensemble of them."""
    folder = Path(folder)
    if (folder / ENSEMBLE_FILE).is_file():
        count = int(read_json(folder / ENSEMBLE_FILE)["members"])
        return RankerEnsemble([TrainedRanker.load(folder / f"member-{i}") for i in range(count)])
    return TrainedRanker.load(folder)


def _frame_columns(features: pd.DataFrame, names: Sequence[str]) -> dict[str, pd.Series]:
    """The columns of `features` a ranker reads (absent ones are left to be unknown)."""
    return {name: features[name] for name in names if name in features}


def categorical_codes(frame: pd.DataFrame, categories: dict[str, list[str]]) -> pd.DataFrame:
    """Categorical columns as float codes in the given vocabularies (NaN: unknown)."""
    frame = frame.copy()
    for name, vocabulary in categories.items():
        if name in frame:
            frame[name] = category_codes(frame[name], vocabulary)
    return frame


def category_codes(values: Any, vocabulary: Sequence[str]) -> np.ndarray:
    """Float codes of `values` in `vocabulary` (NaN for missing or unseen values)."""
    array = getattr(values, "array", values)
    if isinstance(array, pd.Categorical) and list(array.categories) == list(vocabulary):
        codes = array.codes.astype(np.float64)
    else:
        lookup = _vocabulary_lookup(tuple(vocabulary))
        objects = np.asarray(values, dtype=object)
        codes = np.fromiter((lookup.get(value, -1) for value in objects), np.float64, len(objects))
    codes[codes < 0] = np.nan
    return codes


@functools.lru_cache(maxsize=256)
def _vocabulary_lookup(vocabulary: tuple[str, ...]) -> dict[str, int]:
    """Code of each value of a vocabulary, built once per vocabulary: a served request
    looks up a few hundred values, where building a pandas index each time cost more than
    the lookups."""
    return {value: code for code, value in reversed(list(enumerate(vocabulary)))}


def train_ranker(
    fit: RankingMatrix | QueryGroups,
    early_stopping: RankingMatrix | QueryGroups,
    feature_names: Sequence[str],
    categories: dict[str, list[str]],
    config: RankerConfig,
) -> TrainedRanker:
    """Fit on `fit`, stop when NDCG@eval_at on `early_stopping` stops improving. Query
    groups (frames) are turned into the matrices first (`RankingMatrix.of`)."""
    fit = RankingMatrix.of(fit, feature_names, categories)
    early_stopping = RankingMatrix.of(early_stopping, feature_names, categories)
    if fit.n_queries == 0:
        raise ValueError(
            "no ranker training query has a positive candidate: the label window's positives "
            "are not among the candidates; widen candidates.n or the label window"
        )
    categorical = [name for name in categories if name in feature_names]
    train_set = fit.dataset(feature_names, categorical)
    valid_sets, names, callbacks = [train_set], ["fit"], []
    if early_stopping.n_queries:
        # Binned with the fit's bin boundaries (LightGBM would otherwise rebuild it so).
        valid_sets.append(early_stopping.dataset(feature_names, categorical, reference=train_set))
        names.append("early_stopping")
        callbacks.append(lgb.early_stopping(config.early_stopping_rounds, verbose=False))
    record: dict[str, dict[str, list[float]]] = {}
    callbacks.append(lgb.record_evaluation(record))
    started = time.perf_counter()
    booster = lgb.train(
        lightgbm_params(config),
        train_set,
        num_boost_round=config.max_rounds,
        valid_sets=valid_sets,
        valid_names=names,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - started
    curves = {
        f"{name}.{metric}": [float(v) for v in values]
        for name, metrics in record.items()
        for metric, values in metrics.items()
    }
    return TrainedRanker(
        booster=booster,
        feature_names=list(feature_names),
        categories=categories,
        best_iteration=int(booster.best_iteration or booster.current_iteration()),
        curves=curves,
        training_s=round(seconds, 2),
    )


@dataclass
class RankingMatrix:
    """A ranker's fit or early-stopping set as LightGBM reads it: one row per candidate,
    in query order, of the features it uses only, categorical ones as codes
    (`feature_matrix`, the matrix `predict_columns` builds). LightGBM bins it without a
    copy of its own; the frame it replaces held every column, and was copied twice.

    float64, as LightGBM made of the frame: float32 would halve it, but its rounding moves
    bin edges, and the ranker trained on gowalla stopped at another iteration."""

    features: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray

    @property
    def n_queries(self) -> int:
        return len(self.sizes)

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    @classmethod
    def of(
        cls,
        groups: RankingMatrix | QueryGroups,
        feature_names: Sequence[str],
        categories: Mapping[str, Sequence[str]],
    ) -> RankingMatrix:
        if isinstance(groups, RankingMatrix):
            return groups
        frame = groups.frame
        columns = _frame_columns(frame, feature_names)
        return cls(
            features=feature_matrix(columns, len(frame), feature_names, categories),
            labels=frame["label"].to_numpy(dtype=np.float64) if len(frame) else np.zeros(0),
            sizes=np.asarray(groups.sizes, dtype=np.int64),
        )

    def dataset(
        self,
        feature_names: Sequence[str],
        categorical: Sequence[str],
        reference: lgb.Dataset | None = None,
    ) -> lgb.Dataset:
        return lgb.Dataset(
            self.features,
            label=self.labels,
            group=self.sizes,
            feature_name=list(feature_names),
            categorical_feature=list(categorical),
            reference=reference,
            free_raw_data=True,
        )


def read_ranking_matrices(
    path: Path,
    row_sets: Sequence[tuple[np.ndarray, np.ndarray]],
    feature_names: Sequence[str],
    categories: Mapping[str, Sequence[str]],
) -> list[RankingMatrix]:
    """One `RankingMatrix` per (rows, query sizes) of `row_sets` (`query_group_rows`),
    filled from the label-feature parquet one row group at a time: the stage holds the
    matrices and one row group, never a frame of every row and column."""
    names = list(feature_names)
    matrices = [
        RankingMatrix(
            features=np.full((len(rows), len(names)), np.nan),
            labels=np.zeros(len(rows)),
            sizes=np.asarray(sizes, dtype=np.int64),
        )
        for rows, sizes in row_sets
    ]
    present = set(pq.ParquetFile(path).schema_arrow.names)
    columns = [name for name in [*names, "label"] if name in present]
    pieces = parquet_row_pieces(path, [rows for rows, _ in row_sets], columns)
    for which, positions, table in pieces:
        frame = table.to_pandas()
        target = matrices[which]
        target.features[positions] = feature_matrix(
            _frame_columns(frame, names), len(frame), names, categories
        )
        target.labels[positions] = frame["label"].to_numpy(dtype=np.float64)
    return matrices


def feature_matrix(
    columns: Mapping[str, Any],
    n_rows: int,
    feature_names: Sequence[str],
    categories: Mapping[str, Sequence[str]],
) -> np.ndarray:
    """The float matrix a ranker trains and predicts on: a column per feature name in
    that order, categorical ones as codes in their vocabularies, NaN for absent features
    and unknown values. One function for training and serving."""
    matrix = np.full((n_rows, len(feature_names)), np.nan)
    for position, name in enumerate(feature_names):
        values = columns.get(name)
        if values is None:
            continue
        if name in categories:
            matrix[:, position] = category_codes(values, categories[name])
        else:
            matrix[:, position] = np.asarray(values, dtype=np.float64)
    return matrix
