"""The vectorised ranking, metrics and suite against plain, obviously-correct references:
a full `np.lexsort` of each user's masked scores (ties to the lower item index) and per-user
loops for the metrics. On ml-1m-lcfn (popularity: massive ties; EASE: a personal model) the
production figures must equal the references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from components.config import load_config
from components.data.sources import load_source
from components.data.split import split_tables
from components.evaluation.baselines import fit_baselines
from components.evaluation.bootstrap import paired_bootstrap, paired_bootstraps
from components.evaluation.metrics import top_k_from_scores
from components.evaluation.protocol import (
    EvaluationTask,
    build_evaluation_task,
    evaluate_scorer,
    rank_items,
)
from components.evaluation.suite import COMPARED_METRICS, CURVE_KS, evaluate_models
from tests.conftest import REPO_ROOT, needs_ml1m_lcfn


def reference_top_k(scores: np.ndarray, k: int, excluded: sp.csr_matrix | None) -> np.ndarray:
    """Sort every item of every row: score descending, then item ascending; -inf/NaN never."""
    scores = np.array(scores, dtype=np.float64)
    if excluded is not None:
        scores[sp.csr_matrix(excluded).toarray() != 0] = -np.inf
    scores[np.isnan(scores)] = -np.inf
    n_rows, n_items = scores.shape
    k = min(k, n_items)
    out = np.full((n_rows, k), -1, dtype=np.int64)
    for row in range(n_rows):
        order = np.lexsort((np.arange(n_items), -scores[row]))[:k]
        # Non-finite scores are shown as -1 (+inf sorts first: the production code does too).
        out[row] = np.where(np.isfinite(scores[row, order]), order, -1)
    return out


def reference_metrics(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, list]:
    """Each metric of EVALUATION.md, one user at a time."""
    relevant = sp.csr_matrix(relevant)
    out: dict[str, list] = {name: [] for name in METRICS}
    for user in range(ranked.shape[0]):
        positives = set(relevant.indices[relevant.indptr[user] : relevant.indptr[user + 1]])
        listed = [int(item) for item in ranked[user, :k]]
        hits = [item >= 0 and item in positives for item in listed]
        n_hits = sum(hits)
        n_pos = len(positives)
        ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, n_pos)))
        dcg = sum(1.0 / math.log2(rank + 2) for rank, hit in enumerate(hits) if hit)
        first = next((rank + 1 for rank, hit in enumerate(hits) if hit), None)
        precisions = [sum(hits[: rank + 1]) / (rank + 1) for rank, hit in enumerate(hits) if hit]
        out["recall"].append(n_hits / n_pos if n_pos else 0.0)
        out["ndcg"].append(dcg / ideal if ideal else 0.0)
        out["capped_recall"].append(n_hits / min(k, n_pos) if n_pos else 0.0)
        out["precision"].append(n_hits / k)
        out["hit_rate"].append(float(n_hits > 0))
        out["mrr"].append(1.0 / first if first else 0.0)
        out["map"].append(sum(precisions) / min(k, n_pos) if n_pos else 0.0)
    return out


METRICS = ("recall", "ndcg", "capped_recall", "precision", "hit_rate", "mrr", "map")


def reference_ranking(scorer, task: EvaluationTask, k: int) -> np.ndarray:
    scores = np.asarray(scorer.score(task.user_ids, task.item_ids), dtype=np.float32)
    scores = np.array(scores, dtype=np.float64)
    scores[:, ~task.recommendable] = -np.inf
    return reference_top_k(scores, k, task.excluded)


@pytest.mark.parametrize("seed", range(12))
def test_top_k_equals_a_full_lexsort_with_ties_nan_and_infinities(seed):
    rng = np.random.default_rng(seed)
    n_rows = int(rng.integers(1, 40))
    n_items = int(rng.choice([1, 7, 300, 2500, 9000]))
    k = int(rng.choice([1, 10, 100, 130]))
    scores = rng.integers(0, [3, 40, 1000][seed % 3], (n_rows, n_items)).astype(np.float32)
    if seed % 2:
        draw = rng.random(scores.shape)
        scores[draw < 0.05] = -np.inf
        scores[(draw >= 0.05) & (draw < 0.06)] = np.nan
        scores[draw > 0.998] = np.inf
    if seed % 4 == 3:
        scores[: n_rows // 2, : int(n_items * 0.98)] = -np.inf  # fewer than k finite items
    excluded = sp.random(n_rows, n_items, density=0.05, random_state=seed, format="csr")
    np.testing.assert_array_equal(
        top_k_from_scores(scores, k, excluded), reference_top_k(scores, k, excluded)
    )
    np.testing.assert_array_equal(top_k_from_scores(scores, k), reference_top_k(scores, k, None))


def test_shared_draws_give_each_pair_its_own_interval():
    rng = np.random.default_rng(0)
    pairs = {name: (rng.random(777), rng.random(777)) for name in ("a", "b", "c")}
    together = paired_bootstraps(pairs, n_resamples=300, seed=3)
    for name, (a, b) in pairs.items():
        assert together[name] == paired_bootstrap(a, b, n_resamples=300, seed=3)


@pytest.fixture(scope="module")
def ml1m():
    config = load_config(REPO_ROOT / "configs" / "ml-1m-lcfn.yaml")
    split = split_tables(load_source(config.source), config.split)
    evaluation = config.evaluation.model_copy(
        update={
            "baselines": config.evaluation.baselines.model_copy(
                update={"enabled": ("popularity", "linear")}
            )
        }
    )
    scorers = fit_baselines(split.history("test"), evaluation.baselines, split.test_cutoff)
    return evaluation, split, build_evaluation_task(split, "test", evaluation), scorers


@needs_ml1m_lcfn
@pytest.mark.needs_shared_data
@pytest.mark.slow
def test_ml1m_rankings_metrics_and_suite_equal_the_references(ml1m):
    evaluation, split, task, scorers = ml1m
    assert set(scorers) == {"popularity", "ease"}
    ks = evaluation.ks
    references = {name: reference_ranking(scorer, task, 100) for name, scorer in scorers.items()}
    for name, scorer in scorers.items():
        np.testing.assert_array_equal(rank_items(scorer, task, 100), references[name])
        result = evaluate_scorer(scorer, task, ks)
        for k in ks:
            expected = reference_metrics(references[name], task.relevant, k)
            for metric in METRICS:
                np.testing.assert_allclose(
                    result.per_user[f"{metric}@{k}"], expected[metric], rtol=0, atol=1e-12
                )
                assert result.metrics[f"{metric}@{k}"] == pytest.approx(
                    np.mean(expected[metric]), abs=1e-12
                )

    suite = evaluate_models("popularity", scorers, split, "test", evaluation)
    for result in (suite.model, suite.baselines["ease"]):
        name = "popularity" if result is suite.model else "ease"
        np.testing.assert_array_equal(result.ranked, references[name])
        for k in sorted(set(CURVE_KS) | set(ks)):
            expected = reference_metrics(references[name], task.relevant, k)
            assert result.curves["recall"][k] == pytest.approx(
                np.mean(expected["recall"]), abs=1e-12
            )
            assert result.curves["ndcg"][k] == pytest.approx(np.mean(expected["ndcg"]), abs=1e-12)
            if k in ks:
                for metric in METRICS:
                    assert result.metrics[f"{metric}@{k}"] == pytest.approx(
                        np.mean(expected[metric]), abs=1e-12
                    )
    for metric in COMPARED_METRICS:
        alone = paired_bootstrap(
            suite.model.per_user[metric],
            suite.baselines["ease"].per_user[metric],
            n_resamples=evaluation.bootstrap_resamples,
        )
        assert suite.comparisons["ease"][metric] == alone.to_dict()
