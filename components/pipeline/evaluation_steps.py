"""The evaluation phase's steps: score the held-out model beside the baselines on the test
window, compare a challenger with the champion on data neither has seen, and score a
registered bundle on a snapshot (`rewear evaluate`). Plain functions over paths, like
`components.pipeline.data_steps`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.config import EvaluationConfig, ExecutionConfig, PipelineConfig
from components.data.snapshot import read_tables
from components.data.split import DataSplit, Stage, read_split, split_tables
from components.evaluation.baselines import fit_baselines
from components.evaluation.figures import FIGURE_FILES, render_figures
from components.evaluation.protocol import build_evaluation_task, window_user_count
from components.evaluation.suite import (
    evaluate_models,
    evaluate_ranked,
    rank_every_scorer,
    scoring_batch_users,
    task_rows,
)
from components.interfaces import Scorer
from components.pipeline.results import EvaluationResult
from components.pipeline.sharding import (
    Shard,
    ShardedStep,
    publish_shard,
    shard_folder,
    shard_ranges,
    where_it_ran,
)
from components.ranking.model import TwoStageModel, retrieval_only
from components.retrieval.candidate_table import CandidateTable
from components.serving.recommender import BundleRecommender
from components.store import atomic_directory


def held_out_scorers(model_uri: str) -> dict[str, TwoStageModel]:
    """The run's held-out two-stage model as "model"; with a ranker also "retrieval_only"
    (its candidates in fusion order), the comparison that tells what the ranker adds."""
    two_stage = TwoStageModel.load(Path(model_uri))
    if two_stage.ranker is None:
        return {"model": two_stage}
    return {"model": two_stage, "retrieval_only": retrieval_only(two_stage)}


def evaluation_scorers(
    data: DataSplit, evaluation_model_uri: str, config: EvaluationConfig, candidates_uri: str | None
) -> dict[str, Scorer]:
    """The held-out model (reading `candidates_uri` when given), its retrieval-only order
    and every baseline, by name: the model first."""
    held_out = held_out_scorers(evaluation_model_uri)
    if candidates_uri is not None:
        table = CandidateTable.read(Path(candidates_uri))
        held_out["model"].stack.serve_known_candidates(table)
    stack = held_out["model"].stack
    history = data.history("test")
    # The model's own stack was fitted on this history at this cut-off: baselines with
    # its sources' settings are its fitted models.
    same_fit = stack.moment == data.test_cutoff and len(stack.history) == len(history)
    return {
        **held_out,
        **fit_baselines(
            history,
            config.baselines,
            data.test_cutoff,
            fitted=stack.models if same_fit else None,
            fitted_with=stack.settings,
        ),
    }


def plan_evaluation(
    split_uri: str,
    evaluation_model_uri: str,
    candidates_uri: str | None,
    config: EvaluationConfig,
    execution: ExecutionConfig,
    run_dir: Path,
) -> dict[str, Any]:
    """The test window's evaluated users (sorted ids) cut into shards of whole scoring
    batches."""
    task = build_evaluation_task(read_split(Path(split_uri)), "test", config)
    return {
        "users": task.n_users,
        "shards": shard_ranges(task.n_users, execution.shard_users, scoring_batch_users(task)),
    }


def evaluation_shard(
    split_uri: str,
    evaluation_model_uri: str,
    candidates_uri: str | None,
    config: EvaluationConfig,
    execution: ExecutionConfig,
    plan: dict[str, Any],
    shard: Shard,
    run_dir: Path,
) -> dict[str, Any]:
    """Every scorer's ranked lists of one shard's users (the per-user work: scoring the
    catalogue), saved as arrays for the combine."""
    started = time.perf_counter()
    data = read_split(Path(split_uri))
    task = task_rows(build_evaluation_task(data, "test", config), shard["start"], shard["stop"])
    with publish_shard(run_dir, "evaluate", shard) as staging:
        own = None
        if candidates_uri is not None:
            # Only this shard's users' candidates: its memory is a shard's, not every user's.
            own = staging / "candidates.parquet"
            users = pa.array([str(user) for user in task.user_ids], pa.string())
            pq.write_table(
                pq.read_table(candidates_uri, filters=pc.field("user_id").isin(users)), own
            )
        scorers = evaluation_scorers(
            data, evaluation_model_uri, config, None if own is None else str(own)
        )
        with scorers["model"].stack.remembering_candidates():
            ranked = rank_every_scorer(scorers, task, config)
        if own is not None:
            own.unlink()
        np.savez(staging / "ranked.npz", **ranked)
    folder = shard_folder(run_dir, "evaluate", shard)
    return {
        "uri": str(folder / "ranked.npz"),
        "scorers": list(ranked),
        "users": task.n_users,
        "seconds": time.perf_counter() - started,
        "ran_on": where_it_ran(),
    }


def combine_evaluation(
    split_uri: str,
    evaluation_model_uri: str,
    candidates_uri: str | None,
    config: EvaluationConfig,
    execution: ExecutionConfig,
    plan: dict[str, Any],
    parts: list[dict[str, Any]],
    run_dir: Path,
) -> EvaluationResult:
    """Every scorer's ranked lists of all users (the shards' in order: the task's user
    order), then the suite's summaries, intervals and figures from them, as one pass."""
    data = read_split(Path(split_uri))
    task = build_evaluation_task(data, "test", config)
    names = parts[0]["scorers"]
    lists: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for part in parts:
        with np.load(part["uri"], allow_pickle=False) as arrays:
            for name in names:
                lists[name].append(arrays[name])
    ranked = {name: np.concatenate(arrays) for name, arrays in lists.items()}
    suite = evaluate_ranked("model", ranked, data, "test", config, task)
    target = Path(run_dir) / "evaluation"
    with atomic_directory(target, overwrite=True) as staging:
        suite.per_user_frame().to_parquet(staging / "per_user.parquet", index=False)
        render_figures(suite, staging)
    return {
        "metrics": suite.model.metrics,
        "baselines": suite.baseline_metrics(),
        "comparisons": suite.comparisons,
        "segments": suite.segments(),
        "evaluated_users": suite.n_users,
        "window_users": window_user_count(data.test, config),
        "uri": str(target),
        "figures": [str(target / name) for name in FIGURE_FILES],
    }


#: Score the held-out two-stage model beside every baseline on the test window with the
#: same code, as plan -> shards -> combine (components.pipeline.sharding); per-user metrics
#: and figures go to `run_dir/evaluation`. With `candidates_uri` (the test candidates its
#: own stack generated), the model and its retrieval-only order read them instead of
#: running every source again.
evaluate = ShardedStep("evaluate", plan_evaluation, evaluation_shard, combine_evaluation)


def compare_with_champion_bundle(
    split_uri: str,
    evaluation_model_uri: str,
    champion_bundle_dir: str,
    champion_version: int,
    snapshot_id: str,
    config: EvaluationConfig,
) -> dict[str, Any]:
    """Challenger vs champion, paired over users, on data neither has seen.

    Temporal: the window after both the test cut-off and the champion's last training
    interaction (the champion is usually refitted on everything it had, so the challenger's
    own test window would flatter it). Fixed split: only on the champion's own snapshot.
    """
    champion = BundleRecommender.load(Path(champion_bundle_dir))
    data = read_split(Path(split_uri))
    base = {"champion_version": champion_version, "comparable": False}
    if data.protocol == "fixed":
        if champion.metadata.get("snapshot_id") != snapshot_id:
            return {**base, "reason": "the champion was trained on another fixed-split snapshot"}
    else:
        start = max(data.test_cutoff, champion.trained_until or data.test_cutoff)
        if not (data.test["ts"] >= start).any():
            return {
                **base,
                "reason": f"no interaction after the champion's training data ends ({start})",
            }
        data = data.with_test_cutoff(start)
        base["window_start"] = start.isoformat()
    scorers = {
        "challenger": held_out_scorers(evaluation_model_uri)["model"],
        "champion": champion,
    }
    suite = evaluate_models("challenger", scorers, data, "test", config)
    keys = [key for key in suite.model.metrics if key.split("@")[0] in ("recall", "ndcg")]
    return {
        **base,
        "comparable": True,
        "evaluated_users": suite.n_users,
        "challenger": {key: suite.model.metrics[key] for key in keys},
        "champion": {key: suite.baselines["champion"].metrics[key] for key in keys},
        "intervals": suite.comparisons["champion"],
    }


class LeakageError(ValueError):
    """The model saw the window it would be evaluated on."""


def evaluate_registered(
    recommender: BundleRecommender,
    tables_root: Path,
    config: PipelineConfig,
    stage: Stage = "test",
) -> dict[str, Any]:
    """Score a registered bundle on a snapshot's split, beside freshly fitted baselines.

    Refuses when the bundle was trained on data at or after the stage's cut-off: its
    metrics would be measured on its own training data.
    """
    tables = read_tables(Path(tables_root))
    data = split_tables(tables, config.split)
    cutoff = data.cutoff(stage)
    trained_until = recommender.trained_until
    if cutoff is not None and trained_until is not None and trained_until > cutoff:
        raise LeakageError(
            f"this model was trained on interactions up to {trained_until}, after the "
            f"{stage} cut-off {cutoff} of this snapshot: it would be scored on its own "
            "training data. Evaluate it on a newer snapshot, or register models with "
            "model.refit_on_all_data: false to score them on their own snapshot."
        )
    scorers = {
        "model": recommender,
        **fit_baselines(data.history(stage), config.evaluation.baselines, cutoff),
    }
    suite = evaluate_models("model", scorers, data, stage, config.evaluation)
    return {
        "metrics": suite.model.metrics,
        "baselines": suite.baseline_metrics(),
        "comparisons": suite.comparisons,
        "segments": suite.segments(),
        "evaluated_users": suite.n_users,
        "split": data.summary(),
    }
