"""One evaluation of a model beside its baselines: accuracy, beyond-accuracy, segments and
paired bootstrap intervals, all from the same ranked lists and the same protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import COMPARED_EXPOSURE, COMPARED_METRICS, EvaluationConfig, metric_k
from components.data.split import DataSplit, Stage
from components.evaluation.beyond_accuracy import (
    beyond_accuracy_report,
    exposure_counts,
    lorenz_curve,
    seller_exposure,
)
from components.evaluation.bootstrap import compare_exposure, paired_bootstraps
from components.evaluation.metrics import (
    hits_matrix,
    mean_over_users,
    metrics_from_hits,
    n_relevant,
    per_user_metrics,
)
from components.evaluation.protocol import (
    EvaluationTask,
    build_evaluation_task,
    rank_items,
    scoring_batch_size,
)
from components.interfaces import Scorer

CURVE_KS = (1, 5, 10, 20, 50, 100)
SEGMENTS = ("cold_users", "new_items")


@dataclass(frozen=True)
class CatalogueContext:
    """Per-item facts the beyond-accuracy metrics need, aligned with the task's items."""

    item_popularity: np.ndarray
    category_codes: np.ndarray | None
    seller_codes: np.ndarray | None
    new_item_flags: np.ndarray | None
    small_seller_flags: np.ndarray | None
    cold_user_flags: np.ndarray


@dataclass
class ModelEvaluation:
    name: str
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    ranked: np.ndarray
    curves: dict[str, dict[int, float]]
    segments: dict[str, dict[str, float]] = field(default_factory=dict)
    item_exposure: np.ndarray | None = None
    seller_exposure: np.ndarray | None = None


@dataclass
class EvaluationSuite:
    """The model's evaluation, each baseline's, and the model-vs-baseline intervals."""

    stage: Stage
    n_users: int
    model: ModelEvaluation
    baselines: dict[str, ModelEvaluation]
    comparisons: dict[str, dict[str, dict[str, Any]]]
    segment_sizes: dict[str, int]
    user_ids: np.ndarray

    def baseline_metrics(self) -> dict[str, dict[str, float]]:
        return {name: result.metrics for name, result in self.baselines.items()}

    def segments(self) -> dict[str, dict[str, dict[str, float]]]:
        """{segment: {"users": n, "model": {...}, "<baseline>": {...}}}."""
        out: dict[str, dict[str, Any]] = {}
        for segment, size in self.segment_sizes.items():
            out[segment] = {"users": size, "model": self.model.segments.get(segment, {})}
            for name, result in self.baselines.items():
                out[segment][name] = result.segments.get(segment, {})
        return out

    def per_user_frame(self) -> pd.DataFrame:
        """Per-user metric values of every model: kept for later paired comparisons."""
        columns: dict[str, Any] = {"user_id": self.user_ids}
        for result in (self.model, *self.baselines.values()):
            for metric, values in result.per_user.items():
                columns[f"{result.name}/{metric}"] = values
        return pd.DataFrame(columns)


def catalogue_context(
    split: DataSplit, stage: Stage, task: EvaluationTask, config: EvaluationConfig
) -> CatalogueContext:
    items = split.tables.items.set_index("item_id").loc[task.item_ids]
    history = split.history(stage)
    popularity = history["item_id"].value_counts().reindex(task.item_ids).fillna(0).to_numpy(float)
    category_codes = _codes(items["category"])
    seller_codes = _codes(items["seller_id"])
    cutoff = split.cutoff(stage)
    new_flags = None
    if cutoff is not None and items["created_at"].notna().any():
        created = items["created_at"]
        new_flags = (
            ((created > cutoff - pd.Timedelta(config.new_item_age)) & (created <= cutoff))
            .fillna(False)
            .to_numpy(bool)
        )
    small_flags = None
    if seller_codes is not None:
        listings = pd.Series(seller_codes).value_counts()
        small = listings[listings <= config.small_seller_max_listings].index
        small_flags = np.isin(seller_codes, small) & (seller_codes >= 0)
    counts = history["user_id"].value_counts().reindex(task.user_ids).fillna(0).to_numpy()
    return CatalogueContext(
        item_popularity=popularity,
        category_codes=category_codes,
        seller_codes=seller_codes,
        new_item_flags=new_flags,
        small_seller_flags=small_flags,
        cold_user_flags=counts <= config.cold_user_max_interactions,
    )


def evaluate_models(
    model_name: str,
    scorers: Mapping[str, Scorer],
    split: DataSplit,
    stage: Stage,
    config: EvaluationConfig,
) -> EvaluationSuite:
    """Evaluate `scorers[model_name]` and every other scorer (the baselines) identically."""
    task = build_evaluation_task(split, stage, config)
    ranked = rank_every_scorer(scorers, task, config)
    return evaluate_ranked(model_name, ranked, split, stage, config, task)


def rank_depth(config: EvaluationConfig) -> int:
    """How many items each user's ranked list holds: the largest K and curve point."""
    return max(max(config.ks), *CURVE_KS)


def scoring_batch_users(task: EvaluationTask) -> int:
    """Users `rank_items` scores at a time on this task (its default): shards of whole
    batches score the same batches as one pass over every user."""
    return scoring_batch_size(int(np.count_nonzero(task.recommendable)))


def task_rows(task: EvaluationTask, start: int, stop: int) -> EvaluationTask:
    """The task restricted to its users [start, stop) (a shard): same items, same masks."""
    return replace(
        task,
        user_ids=task.user_ids[start:stop],
        relevant=task.relevant[start:stop],
        excluded=task.excluded[start:stop],
    )


def rank_every_scorer(
    scorers: Mapping[str, Scorer], task: EvaluationTask, config: EvaluationConfig
) -> dict[str, np.ndarray]:
    """Each scorer's top `rank_depth` item indices per task user, by scorer name: the only
    per-user work of an evaluation (all the rest is summaries of these lists)."""
    depth = rank_depth(config)
    return {name: rank_items(scorer, task, depth) for name, scorer in scorers.items()}


def evaluate_ranked(
    model_name: str,
    ranked: Mapping[str, np.ndarray],
    split: DataSplit,
    stage: Stage,
    config: EvaluationConfig,
    task: EvaluationTask | None = None,
) -> EvaluationSuite:
    """The suite from every scorer's ranked lists of all the task's users (in the task's
    user order, e.g. shards' lists concatenated): metrics, curves, segments, exposure and
    the paired bootstrap intervals, as `evaluate_models` computes them."""
    if task is None:
        task = build_evaluation_task(split, stage, config)
    context = catalogue_context(split, stage, task, config)
    new_item_relevant = None
    if context.new_item_flags is not None:
        new_item_relevant = task.relevant.multiply(context.new_item_flags[None, :]).tocsr()
        new_item_relevant.eliminate_zeros()
    results = {
        name: _evaluate_one(name, lists, task, context, config, new_item_relevant)
        for name, lists in ranked.items()
    }
    model = results.pop(model_name)
    compared = _compare(model, results, config)
    comparisons = {
        name: compared[name] | _compare_exposure(model, baseline, task, context, config)
        for name, baseline in results.items()
    }
    segment_sizes = {"cold_users": int(context.cold_user_flags.sum())}
    if new_item_relevant is not None:
        segment_sizes["new_items"] = int((np.diff(new_item_relevant.indptr) > 0).sum())
    return EvaluationSuite(
        stage=stage,
        n_users=task.n_users,
        model=model,
        baselines=results,
        comparisons=comparisons,
        segment_sizes=segment_sizes,
        user_ids=task.user_ids,
    )


def _evaluate_one(
    name: str,
    ranked: np.ndarray,
    task: EvaluationTask,
    context: CatalogueContext,
    config: EvaluationConfig,
    new_item_relevant: sp.csr_matrix | None,
) -> ModelEvaluation:
    if ranked.shape[0] != task.n_users:
        raise ValueError(
            f"{name}: ranked lists of {ranked.shape[0]} users for a task of {task.n_users}"
        )
    ks = tuple(config.ks)
    # One membership search of the longest lists serves every K and every curve point.
    hits = hits_matrix(ranked, task.relevant)
    positives = n_relevant(task.relevant)
    per_user = metrics_from_hits(hits, positives, ks)
    metrics = {key: mean_over_users(values, task.relevant) for key, values in per_user.items()}
    for k in ks:
        metrics.update(
            beyond_accuracy_report(
                ranked[:, :k],
                k=k,
                n_recommendable=int(task.recommendable.sum()),
                item_popularity=context.item_popularity,
                category_codes=context.category_codes,
                seller_codes=context.seller_codes,
                new_item_flags=context.new_item_flags,
                small_seller_flags=context.small_seller_flags,
                recommendable=task.recommendable,
            )
        )
    curves: dict[str, dict[int, float]] = {"recall": {}, "ndcg": {}}
    curve_ks = [k for k in sorted(set(CURVE_KS) | set(ks)) if k <= ranked.shape[1]]
    curve_values = metrics_from_hits(hits, positives, curve_ks, tuple(curves))
    for k in curve_ks:
        for metric in curves:
            curves[metric][k] = mean_over_users(curve_values[f"{metric}@{k}"], task.relevant)
    segments: dict[str, dict[str, float]] = {}
    cold = context.cold_user_flags
    if cold.any():
        segments["cold_users"] = {
            key: float(values[cold].mean()) for key, values in per_user.items()
        }
    if new_item_relevant is not None:
        has_new = np.diff(new_item_relevant.indptr) > 0
        if has_new.any():
            new_per_user = per_user_metrics(ranked[has_new], new_item_relevant[has_new], ks)
            segments["new_items"] = {k: float(v.mean()) for k, v in new_per_user.items()}
    largest_k = max(ks)
    item_exposure = exposure_counts(ranked[:, :largest_k], len(task.item_ids))
    sellers = (
        None
        if context.seller_codes is None
        else seller_exposure(item_exposure, context.seller_codes)
    )
    return ModelEvaluation(
        name=name,
        metrics=metrics,
        per_user=per_user,
        ranked=ranked,
        curves=curves,
        segments=segments,
        item_exposure=item_exposure,
        seller_exposure=sellers,
    )


def _compare(
    model: ModelEvaluation, baselines: Mapping[str, ModelEvaluation], config: EvaluationConfig
) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired bootstrap of model - baseline on COMPARED_METRICS, every baseline and metric
    on one shared set of resampled users (the same draws each would make alone)."""
    pairs = {
        (name, metric): (model.per_user[metric], baseline.per_user[metric])
        for name, baseline in baselines.items()
        for metric in COMPARED_METRICS
        if metric in model.per_user and metric in baseline.per_user
    }
    intervals = paired_bootstraps(pairs, n_resamples=config.bootstrap_resamples)
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in baselines}
    for (name, metric), interval in intervals.items():
        out[name][metric] = interval.to_dict()
    return out


def _compare_exposure(
    model: ModelEvaluation,
    baseline: ModelEvaluation,
    task: EvaluationTask,
    context: CatalogueContext,
    config: EvaluationConfig,
) -> dict[str, dict[str, Any]]:
    ks = {metric_k(metric) for metric in COMPARED_EXPOSURE} & set(config.ks)
    out: dict[str, dict[str, Any]] = {}
    for k in sorted(ks):
        compared = compare_exposure(
            model.ranked,
            baseline.ranked,
            k=k,
            seller_codes=context.seller_codes,
            new_item_flags=context.new_item_flags,
            recommendable=task.recommendable,
        )
        out.update({key: value for key, value in compared.items() if key in COMPARED_EXPOSURE})
    return out


def lorenz_points(exposure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lorenz_curve(exposure)


def _codes(values: pd.Series) -> np.ndarray | None:
    if values.isna().all():
        return None
    codes, _ = pd.factorize(values, use_na_sentinel=True)
    return codes.astype(np.int64)
