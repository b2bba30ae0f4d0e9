import numpy as np
import pytest

from components.evaluation.beyond_accuracy import beyond_accuracy_report
from components.evaluation.bootstrap import (
    BootstrapInterval,
    compare_exposure,
    compare_per_user,
    paired_bootstrap,
    paired_jackknife_statistic,
)


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


def _market(n_users=400, n_items=300, n_sellers=60, seed=0):
    """Lists of 20 drawn from a catalogue where seller 0..4 own the first 50 listings."""
    rng = np.random.default_rng(seed)
    sellers = np.concatenate([np.repeat(np.arange(5), 10), rng.integers(5, n_sellers, 250)])
    spread = np.stack([rng.choice(n_items, 20, replace=False) for _ in range(n_users)])
    biggest = np.stack([rng.choice(50, 20, replace=False) for _ in range(n_users)])
    new = np.zeros(n_items, dtype=bool)
    new[250:] = True
    return spread, biggest, sellers, new


def test_exposure_figures_match_the_report_and_their_intervals_pair_users():
    spread, biggest, sellers, new = _market()
    recommendable = np.ones(len(sellers), dtype=bool)
    result = compare_exposure(
        biggest,
        spread,
        k=20,
        seller_codes=sellers,
        new_item_flags=new,
        recommendable=recommendable,
        seed=4,
    )
    for ranked, side in ((biggest, "model"), (spread, "other")):
        report = beyond_accuracy_report(
            ranked,
            k=20,
            item_popularity=np.ones(len(sellers)),
            seller_codes=sellers,
            new_item_flags=new,
            recommendable=recommendable,
        )
        assert result["gini_sellers@20"][side] == pytest.approx(report["gini_sellers@20"])
        assert result["new_item_exposure@20"][side] == pytest.approx(report["new_item_exposure@20"])
    gini = result["gini_sellers@20"]
    # Five sellers out of 60 get every slot (Gini 55/60 if evenly), the spread lists ~.3.
    assert gini["model"] > 0.9 and gini["other"] < 0.4
    assert gini["low"] > 0.5 and gini["significant"]
    exposure = result["new_item_exposure@20"]
    assert exposure["model"] == 0.0 and exposure["high"] < -0.1
    # Both figures' jackknife replicates leave out the same 50 groups of users.
    assert gini["n_resamples"] == exposure["n_resamples"] == 50


def test_the_same_lists_give_a_zero_exposure_interval():
    spread, _, sellers, new = _market()
    result = compare_exposure(
        spread,
        spread,
        k=20,
        seller_codes=sellers,
        new_item_flags=new,
        recommendable=np.ones(len(sellers), dtype=bool),
    )
    for interval in result.values():
        assert interval["difference"] == interval["low"] == interval["high"] == 0.0


def test_the_jackknife_of_a_mean_is_the_usual_interval_of_the_mean_difference():
    # A statistic that is a weighted mean: the grouped jackknife's standard error is the
    # usual one of the mean difference, within the noise of 50 groups.
    rng = np.random.default_rng(3)
    a, b = rng.random(2_000), rng.random(2_000)

    def mean_of(values):
        return lambda weights: weights @ values / weights.sum(axis=1)

    interval = paired_jackknife_statistic(mean_of(a), mean_of(b), 2_000)
    assert interval.difference == pytest.approx((a - b).mean())
    usual = 1.96 * (a - b).std(ddof=1) / np.sqrt(2_000)
    assert (interval.high - interval.low) / 2 == pytest.approx(usual, rel=0.3)
    assert interval.n_resamples == 50


def _lists(rng, n_users, popularity, k=10):
    """Each user's k distinct listings, drawn in proportion to `popularity`."""
    keys = np.log(popularity)[None, :] + rng.gumbel(size=(n_users, len(popularity)))
    return np.argsort(-keys, axis=1)[:, :k]


def test_the_seller_gini_interval_holds_its_point_and_covers_at_its_level():
    """Coverage by simulation: samples of 200 users from two arms whose lists concentrate
    differently over 800 sellers (sparse exposure, as in a marketplace). The estimand is
    the figure's expectation at that sample size (the mean over 300 independent samples).
    A bootstrap resample counts a user drawn twice with their list twice, which shifted the
    percentile interval off its own point here (it covered 34%); the jackknife's covers
    near its level."""
    from components.evaluation.beyond_accuracy import seller_gini_statistic

    rng = np.random.default_rng(11)
    n_items, n_users = 1_500, 200
    sellers = rng.integers(0, 800, n_items)
    counted = np.arange(800)
    challenger = 1.0 / np.arange(1, n_items + 1) ** 0.9
    champion = 1.0 / np.arange(1, n_items + 1) ** 0.6
    samples = [
        (_lists(rng, n_users, challenger), _lists(rng, n_users, champion)) for _ in range(300)
    ]
    everyone = np.ones((1, n_users))
    points = [
        seller_gini_statistic(a, sellers, counted)(everyone)[0]
        - seller_gini_statistic(b, sellers, counted)(everyone)[0]
        for a, b in samples
    ]
    truth = float(np.mean(points))
    covered = 0
    for seed, (a, b) in enumerate(samples[:100]):
        interval = paired_jackknife_statistic(
            seller_gini_statistic(a, sellers, counted),
            seller_gini_statistic(b, sellers, counted),
            n_users,
            seed=seed,
        )
        assert interval.low < interval.difference < interval.high
        covered += interval.low <= truth <= interval.high
    assert 0.89 <= covered / 100 <= 0.99


def test_exposure_without_sellers_or_dates_is_left_out():
    spread, biggest, _, _ = _market()
    result = compare_exposure(
        biggest,
        spread,
        k=20,
        seller_codes=None,
        new_item_flags=None,
        recommendable=np.ones(300, dtype=bool),
    )
    assert result == {}
