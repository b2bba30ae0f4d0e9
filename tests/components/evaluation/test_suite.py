"""The evaluation suite: model and baselines through the same code, segments, intervals,
summaries and figures, on a small synthetic marketplace."""

import numpy as np
import pytest

from components.config import CandidatesConfig, EvaluationConfig
from components.evaluation.baselines import fit_baselines
from components.evaluation.figures import FIGURE_FILES, render_figures
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer
from components.evaluation.suite import evaluate_models
from components.evaluation.summary import interval_rows, summary_markdown, summary_rows
from components.retrieval.popularity import RecentPopularity
from components.retrieval.stack import fit_candidate_models


@pytest.fixture(scope="module")
def suite(synthetic_split):
    split = synthetic_split
    config = EvaluationConfig(ks=(10, 20), bootstrap_resamples=200)
    history = split.history("test")
    scorers = {
        "model": RecentPopularity.fit(history, config.baselines.popularity, split.test_cutoff),
        **fit_baselines(history, config.baselines, split.test_cutoff),
    }
    return evaluate_models("model", scorers, split, "test", config), split, config


def test_model_and_baselines_share_one_protocol(suite):
    result, split, config = suite
    assert set(result.baselines) == {"popularity", "covisitation", "ease"}
    # The "model" here is the popularity baseline itself: identical figures, a zero interval.
    assert result.model.metrics["recall@20"] == result.baselines["popularity"].metrics["recall@20"]
    same = result.comparisons["popularity"]["ndcg@10"]
    assert same["difference"] == same["low"] == same["high"] == 0.0
    assert not same["significant"]
    reference = evaluate_scorer(
        RecentPopularity.fit(split.history("test"), config.baselines.popularity, split.test_cutoff),
        build_evaluation_task(split, "test", config),
        config.ks,
    )
    assert result.model.metrics["ndcg@20"] == pytest.approx(reference.metrics["ndcg@20"])


def test_beyond_accuracy_and_segments_are_reported(suite):
    result, _, _ = suite
    metrics = result.model.metrics
    for key in ("coverage@20", "novelty@20", "diversity@20", "gini_items@20", "gini_sellers@20"):
        assert np.isfinite(metrics[key])
    # One list for everyone: 20 distinct items cover a tiny share of the catalogue.
    assert metrics["gini_items@20"] > 0.9
    assert result.baselines["covisitation"].metrics["coverage@20"] > metrics["coverage@20"]
    segments = result.segments()
    assert segments["cold_users"]["users"] == result.segment_sizes["cold_users"] > 0
    assert "recall@20" in segments["new_items"]["model"]
    frame = result.per_user_frame()
    assert len(frame) == result.n_users
    assert "covisitation/ndcg@10" in frame.columns


def test_summaries_and_figures(suite, tmp_path):
    result, _, _ = suite
    rows = summary_rows(result.model.metrics, result.baseline_metrics(), result.comparisons)
    assert [row["metric"] for row in rows] == ["recall@10", "ndcg@10", "recall@20", "ndcg@20"]
    assert rows[1]["Δ vs popularity"].endswith("(n.s.)")
    assert {row["vs"] for row in interval_rows(result.comparisons)} == {
        "popularity",
        "covisitation",
        "ease",
    }
    markdown = summary_markdown(
        {
            "dataset": "synthetic",
            "run_id": "r1",
            "snapshot_id": "s1",
            "protocol": "temporal",
            "evaluated_users": result.n_users,
            "recommender": {"kind": "retrieval_fusion", "sources": ["popularity"]},
            "metrics": result.model.metrics,
            "baselines": result.baseline_metrics(),
            "comparisons": result.comparisons,
            "segments": result.segments(),
        }
    )
    assert "### cold_users" in markdown and "## Exposure and diversity @20" in markdown
    paths = render_figures(result, tmp_path)
    assert [p.name for p in paths] == list(FIGURE_FILES)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_baselines_reuse_candidate_models_fitted_with_their_settings(synthetic_split):
    """A baseline whose settings equal a candidate source's is that fitted model (no second
    fit); one with other settings is fitted anew, and scores as it would alone."""
    split = synthetic_split
    history = split.history("test")
    baselines = EvaluationConfig().baselines
    candidates = CandidatesConfig(covisitation=baselines.covisitation)
    fitted = fit_candidate_models(
        history,
        candidates.model_copy(update={"sources": ("covisitation", "popularity", "linear")}),
        split.test_cutoff,
    )
    other = baselines.popularity.model_copy(update={"window": "3D"})
    assert candidates.popularity != other

    reused = fit_baselines(
        history,
        baselines.model_copy(update={"popularity": other}),
        split.test_cutoff,
        fitted=fitted,
        fitted_with=candidates,
    )

    assert reused["covisitation"] is fitted["covisitation"]
    assert reused["ease"] is fitted["linear"]
    assert reused["popularity"] is not fitted["popularity"]
    alone = RecentPopularity.fit(history, other, split.test_cutoff)
    users, items = list(history["user_id"].unique()[:5]), list(history["item_id"].unique())
    np.testing.assert_array_equal(
        reused["popularity"].score(users, items), alone.score(users, items)
    )
