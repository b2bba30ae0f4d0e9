import numpy as np
import pytest

from components.evaluation.bootstrap import BootstrapInterval, compare_per_user, paired_bootstrap


def test_identical_models_give_a_zero_interval():
    values = np.random.default_rng(0).random(500)
    interval = paired_bootstrap(values, values.copy())
    assert (interval.difference, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert not interval.significant


def test_a_constant_shift_gives_a_point_interval_at_the_shift():
    b = np.random.default_rng(1).random(300)
    interval = paired_bootstrap(b + 0.1, b, n_resamples=200)
    assert interval.difference == pytest.approx(0.1)
    assert interval.low == pytest.approx(0.1)
    assert interval.high == pytest.approx(0.1)
    assert interval.significant


def test_a_clear_noisy_improvement_is_significant_and_covers_the_true_mean():
    rng = np.random.default_rng(2)
    b = rng.random(2000)
    a = b + rng.normal(0.2, 0.5, size=b.size)
    interval = paired_bootstrap(a, b, n_resamples=1000, seed=7)
    assert interval.significant
    assert interval.low < interval.difference < interval.high
    assert interval.low < 0.2 < interval.high
    assert interval.n_users == 2000 and interval.n_resamples == 1000


def test_same_seed_same_interval_other_seed_other_interval():
    rng = np.random.default_rng(3)
    a, b = rng.random(400), rng.random(400)
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(a, b, seed=5)
    assert paired_bootstrap(a, b, seed=5) != paired_bootstrap(a, b, seed=6)


def test_chunking_does_not_change_the_interval(monkeypatch):
    rng = np.random.default_rng(4)
    a, b = rng.random(50), rng.random(50)
    whole = paired_bootstrap(a, b, n_resamples=300)
    monkeypatch.setattr("components.evaluation.bootstrap._MAX_INDICES_PER_CHUNK", 50 * 7)
    chunked = paired_bootstrap(a, b, n_resamples=300)
    assert chunked.difference == whole.difference
    assert chunked.low == pytest.approx(whole.low)
    assert chunked.high == pytest.approx(whole.high)


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    true_difference = 0.05
    covered = 0
    repetitions = 200
    for repetition in range(repetitions):
        b = rng.random(200)
        a = b + true_difference + rng.normal(0, 0.3, size=200)
        interval = paired_bootstrap(a, b, n_resamples=400, seed=repetition)
        covered += interval.low <= true_difference <= interval.high
    assert 0.88 <= covered / repetitions <= 0.99


def test_rejects_mismatched_empty_or_undefined_inputs():
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(np.ones(2), np.ones(2), confidence=1.0)


def test_to_dict_includes_significance():
    interval = BootstrapInterval(0.1, 0.05, 0.15, n_users=10, n_resamples=100, confidence=0.9)
    assert interval.to_dict() == {
        "difference": 0.1,
        "low": 0.05,
        "high": 0.15,
        "n_users": 10,
        "n_resamples": 100,
        "confidence": 0.9,
        "significant": True,
    }
    assert not BootstrapInterval(0.0, -0.1, 0.1, 10, 100, 0.9).significant


def test_compare_per_user_masks_users_and_drops_undefined_values():
    model = {"recall@20": np.array([1.0, 0.5, 9.0, np.nan]), "ndcg@20": np.ones(4)}
    other = {"recall@20": np.array([0.5, 0.5, 0.0, 0.0]), "ndcg@20": np.ones(4)}
    mask = np.array([True, True, False, True])  # user 2 excluded, user 3 undefined
    results = compare_per_user(
        model, other, ["recall@20", "ndcg@20"], mask=mask, n_resamples=50, seed=1
    )
    assert results["recall@20"]["n_users"] == 2
    assert results["recall@20"]["model"] == pytest.approx(0.75)
    assert results["recall@20"]["other"] == pytest.approx(0.5)
    assert results["recall@20"]["difference"] == pytest.approx(0.25)
    assert results["recall@20"]["n_resamples"] == 50
    assert results["ndcg@20"]["n_users"] == 3
    assert not results["ndcg@20"]["significant"]


def test_compare_per_user_names_a_missing_metric():
    with pytest.raises(ValueError, match="'mrr@20' is missing from other"):
        compare_per_user({"mrr@20": np.ones(2)}, {}, ["mrr@20"])
