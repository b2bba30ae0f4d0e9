"""The LightGBM learning-to-rank model over candidate features.

Trained with `lambdarank` (or `rank_xendcg`) on query groups, early-stopped on the NDCG@K of
users held out of the fit, and saved as LightGBM's own text model plus a JSON sidecar
(feature order, categorical vocabularies, training curves). Categorical features are
declared at training time and take the same vocabularies at prediction time: the booster
file records pandas' categories, and `predict` rebuilds the columns with them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from components.config import RankerConfig
from components.ranking.dataset import QueryGroups
from components.store import read_json, write_json

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

        Builds the float matrix LightGBM would make of a pandas frame itself (categorical
        columns as codes in the trained vocabularies), without its per-call pandas overhead.
        Features absent here (e.g. a source missing at serving time) are unknown (NaN)."""
        if not n_rows:
            return np.zeros(0)
        matrix = np.full((n_rows, len(self.feature_names)), np.nan)
        for position, name in enumerate(self.feature_names):
            values = columns.get(name)
            if values is None:
                continue
            if name in self.categories:
                matrix[:, position] = category_codes(values, self.categories[name])
            else:
                matrix[:, position] = np.asarray(values, dtype=np.float64)
        # One request's few hundred rows: OpenMP's thread start-up and, on a busy machine,
        # its spinning cost ten times the prediction itself.
        threads = 1 if n_rows <= SINGLE_THREAD_ROWS else 0
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
        scores = [member.predict_columns(columns, n_rows) for member in self.members]
        return np.mean(scores, axis=0) if n_rows else np.zeros(0)

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
        codes = (
            pd.Index(list(vocabulary), dtype=object)
            .get_indexer(np.asarray(values, dtype=object))
            .astype(np.float64)
        )
    codes[codes < 0] = np.nan
    return codes


def _dataset(
    groups: QueryGroups, feature_names: Sequence[str], categorical: Sequence[str]
) -> lgb.Dataset:
    return lgb.Dataset(
        groups.frame[list(feature_names)],
        label=groups.frame["label"].to_numpy(),
        group=groups.sizes,
        categorical_feature=list(categorical),
        free_raw_data=False,
    )


def train_ranker(
    fit: QueryGroups,
    early_stopping: QueryGroups,
    feature_names: Sequence[str],
    categories: dict[str, list[str]],
    config: RankerConfig,
) -> TrainedRanker:
    """Fit on `fit`, stop when NDCG@eval_at on `early_stopping` stops improving."""
    if fit.n_queries == 0:
        raise ValueError(
            "no ranker training query has a positive candidate: the label window's positives "
            "are not among the candidates; widen candidates.n or the label window"
        )
    categorical = [name for name in categories if name in feature_names]
    train_set = _dataset(fit, feature_names, categorical)
    valid_sets, names, callbacks = [train_set], ["fit"], []
    if early_stopping.n_queries:
        valid_sets.append(_dataset(early_stopping, feature_names, categorical).construct())
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
