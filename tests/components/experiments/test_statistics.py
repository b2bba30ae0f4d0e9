"""The readout's statistics against hand-computed numbers, scipy, a null simulation of daily
looks and (when installed) tea-tasting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from components.experiments.statistics import (
    confidence_sequence,
    cuped,
    difference_in_means,
    interleaving_preference,
    paired_difference,
    sample_ratio_mismatch,
    sequential_half_width,
    sequential_p_value,
    sequential_rho,
    units_for_power,
    wilson_interval,
)

Z_975 = 1.959963984540054


# --- sample-ratio mismatch ---------------------------------------------------------------


def test_srm_chi2_matches_hand_computation_on_three_arms() -> None:
    # Expected 20 each: (10-20)^2/20 + 0 + (30-20)^2/20 = 10; chi2 with 2 df has sf e^(-x/2).
    check = sample_ratio_mismatch([10, 20, 30], [1 / 3, 1 / 3, 1 / 3])
    assert check.chi2 == pytest.approx(10.0)
    assert check.p_value == pytest.approx(math.exp(-5.0))
    assert not check.alarm  # 0.0067 is above the 0.001 default
    assert check.observed_shares == pytest.approx((1 / 6, 1 / 3, 1 / 2))


def test_srm_alarms_on_4700_of_10000_against_an_even_split() -> None:
    # 300^2 / 5000 twice = 36 with 1 df: p about 2e-9.
    check = sample_ratio_mismatch([4_700, 5_300], [0.5, 0.5])
    assert check.chi2 == pytest.approx(36.0)
    assert check.p_value == pytest.approx(2.0 * stats.norm.sf(6.0))
    assert check.alarm


def test_srm_stays_quiet_on_a_healthy_uneven_split() -> None:
    check = sample_ratio_mismatch([9_010, 990], [0.9, 0.1])
    assert check.chi2 == pytest.approx(10**2 / 9_000 + 10**2 / 1_000)
    assert not check.alarm
    assert check.expected_shares == (0.9, 0.1)


@pytest.mark.parametrize(
    ("counts", "shares", "named"),
    [
        ([10, 10], [0.6, 0.6], "sum to 1"),
        ([10, 10, 10], [0.5, 0.5], "expected_shares"),
        ([10, -1], [0.5, 0.5], "non-negative"),
        ([0, 0], [0.5, 0.5], "all zero"),
        ([10], [1.0], "two or more"),
        ([10, 10], [1.0, 0.0], "positive"),
    ],
)
def test_srm_rejects_bad_inputs_naming_them(
    counts: list[int], shares: list[float], named: str
) -> None:
    with pytest.raises(ValueError, match=named):
        sample_ratio_mismatch(counts, shares)


# --- CUPED -------------------------------------------------------------------------------


def _correlated(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = 3.0 + rho * x + math.sqrt(1.0 - rho**2) * rng.normal(size=n)
    return y, x


def test_cuped_keeps_the_mean_and_removes_rho_squared_of_the_variance() -> None:
    y, x = _correlated(100_000, rho=0.7, seed=1)
    result = cuped(y, x)
    assert result.adjusted.mean() == pytest.approx(y.mean(), abs=1e-10)
    assert result.variance_reduction == pytest.approx(0.49, abs=0.01)
    assert result.variance_reduction == pytest.approx(
        1.0 - result.adjusted.var() / y.var(), rel=1e-12
    )


def test_cuped_theta_is_cov_over_var_for_one_covariate() -> None:
    y, x = _correlated(2_000, rho=0.5, seed=2)
    theta = np.cov(x, y)[0, 1] / np.var(x, ddof=1)
    result = cuped(y, x)
    assert result.theta.shape == (1,)
    assert result.theta[0] == pytest.approx(theta, rel=1e-10)
    np.testing.assert_allclose(result.adjusted, y - theta * (x - x.mean()))


def test_cuped_with_two_covariates_recovers_both_coefficients() -> None:
    rng = np.random.default_rng(3)
    covariates = rng.normal(size=(50_000, 2))
    y = 1.0 + covariates @ np.array([2.0, -1.0]) + rng.normal(size=50_000)
    result = cuped(y, covariates)
    np.testing.assert_allclose(result.theta, [2.0, -1.0], atol=0.02)
    assert result.variance_reduction == pytest.approx(5.0 / 6.0, abs=0.01)


def test_cuped_gives_a_constant_covariate_theta_zero() -> None:
    y, x = _correlated(1_000, rho=0.6, seed=4)
    with_constant = cuped(y, np.column_stack([np.full(1_000, 7.0), x]))
    alone = cuped(y, x)
    assert with_constant.theta[0] == 0.0
    assert with_constant.theta[1] == pytest.approx(alone.theta[0])
    np.testing.assert_allclose(with_constant.adjusted, alone.adjusted)


def test_cuped_with_only_constant_covariates_changes_nothing() -> None:
    y, _ = _correlated(100, rho=0.6, seed=5)
    result = cuped(y, np.ones(100))
    np.testing.assert_array_equal(result.adjusted, y)
    assert result.variance_reduction == 0.0


def test_cuped_rejects_misaligned_covariates() -> None:
    with pytest.raises(ValueError, match="covariates"):
        cuped(np.arange(10.0), np.arange(9.0))
    with pytest.raises(ValueError, match="NaN"):
        cuped(np.arange(3.0), np.array([1.0, np.nan, 2.0]))


# --- fixed-horizon difference in means ---------------------------------------------------


def test_difference_in_means_matches_welch_t_test_in_large_samples() -> None:
    rng = np.random.default_rng(6)
    treatment = rng.exponential(1.1, size=20_000)
    control = rng.exponential(1.0, size=30_000)
    estimate = difference_in_means(treatment, control)
    welch = stats.ttest_ind(treatment, control, equal_var=False)
    assert estimate.difference / estimate.standard_error == pytest.approx(welch.statistic)
    assert estimate.p_value == pytest.approx(welch.pvalue, rel=1e-3)
    assert estimate.high - estimate.low == pytest.approx(2 * Z_975 * estimate.standard_error)
    assert estimate.relative == pytest.approx(estimate.difference / control.mean())
    assert (estimate.n_treatment, estimate.n_control) == (20_000, 30_000)


def test_difference_in_means_on_a_hand_case() -> None:
    # Means 4 and 2, variances 4 and 2: se^2 = 4/3 + 2/2 = 7/3.
    estimate = difference_in_means(np.array([2.0, 4.0, 6.0]), np.array([1.0, 3.0]))
    assert estimate.difference == 2.0
    assert estimate.relative == 1.0
    assert estimate.standard_error == pytest.approx(math.sqrt(7 / 3))
    assert estimate.low == pytest.approx(2.0 - Z_975 * math.sqrt(7 / 3))


def test_relative_difference_is_nan_when_the_control_mean_is_zero() -> None:
    estimate = difference_in_means(np.array([1.0, 2.0]), np.array([-1.0, 1.0]))
    assert math.isnan(estimate.relative)


def test_difference_in_means_names_a_too_short_arm() -> None:
    with pytest.raises(ValueError, match="control has 1 values"):
        difference_in_means(np.ones(5), np.ones(1))
    with pytest.raises(ValueError, match="alpha"):
        difference_in_means(np.ones(5), np.ones(5), alpha=1.5)


# --- confidence sequence -----------------------------------------------------------------


def test_confidence_sequence_equals_the_hand_computed_half_width() -> None:
    # n = 5, sigma^2 = (7/3) * 5; rho^2 = (-2 ln .05 + ln(-2 ln .05 + 1)) / 100 = 0.0793615;
    # half-width = sqrt(35/3 * 2 (5 rho^2 + 1) / (25 rho^2) * ln(sqrt(5 rho^2 + 1) / .05)).
    estimate = confidence_sequence(
        np.array([2.0, 4.0, 6.0]), np.array([1.0, 3.0]), alpha=0.05, tuning_units=100
    )
    assert estimate.high - estimate.difference == pytest.approx(7.208076, rel=1e-6)
    assert estimate.difference - estimate.low == pytest.approx(7.208076, rel=1e-6)
    # e-value: exp(5 rho^2 * (4 / (7/3)) / (2 (5 rho^2 + 1))) / sqrt(5 rho^2 + 1).
    assert estimate.p_value == pytest.approx(0.926442, rel=1e-5)


def test_confidence_sequence_is_wider_than_the_fixed_interval_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(7)
    treatment = rng.normal(0.05, 1.0, size=8_000)
    control = rng.normal(0.0, 1.0, size=8_000)
    widths = []
    for n in (500, 2_000, 8_000):
        fixed = difference_in_means(treatment[:n], control[:n])
        sequence = confidence_sequence(treatment[:n], control[:n])
        assert sequence.high - sequence.low > fixed.high - fixed.low
        assert sequence.difference == fixed.difference
        assert sequence.p_value >= fixed.p_value
        widths.append(sequence.high - sequence.low)
    assert widths[0] > widths[1] > widths[2]


def test_sequential_p_value_is_below_alpha_exactly_when_the_sequence_excludes_zero() -> None:
    rng = np.random.default_rng(8)
    for shift in np.linspace(0.0, 0.3, 13):
        estimate = confidence_sequence(rng.normal(shift, 1.0, 400), rng.normal(0.0, 1.0, 400))
        excludes_zero = estimate.low > 0.0 or estimate.high < 0.0
        assert (estimate.p_value < 0.05) == excludes_zero
        # At level p (rho kept at its alpha=0.05 tuning) the sequence just touches zero.
        if 0.0 < estimate.p_value < 1.0:
            rho_squared = sequential_rho(0.05, 5000) ** 2
            spread = 800 * rho_squared + 1.0
            touching = math.sqrt(
                estimate.standard_error**2
                * 800
                * 2.0
                * spread
                / (800**2 * rho_squared)
                * math.log(math.sqrt(spread) / estimate.p_value)
            )
            assert touching == pytest.approx(abs(estimate.difference), rel=1e-9)


def test_sequential_half_width_is_what_confidence_sequence_uses() -> None:
    rng = np.random.default_rng(9)
    estimate = confidence_sequence(rng.normal(size=300), rng.normal(size=200), tuning_units=900)
    half_width = sequential_half_width(estimate.standard_error, 500, tuning_units=900)
    assert estimate.high - estimate.difference == pytest.approx(float(half_width))
    assert sequential_p_value(estimate.difference, 0.0, 500) == 0.0
    with pytest.raises(ValueError, match="tuning_units"):
        confidence_sequence(np.ones(3), np.zeros(3), tuning_units=0)


def test_daily_looks_keep_the_false_positive_rate_only_with_the_sequence() -> None:
    """1,000 A/A experiments, 20 daily looks of 50 new units per arm, skewed outcomes."""
    replications, days, per_day = 1_000, 20, 50
    rng = np.random.default_rng(10)
    draws = rng.exponential(1.0, size=(2, replications, days, per_day))
    sums = np.cumsum(draws.sum(axis=3), axis=2)
    squares = np.cumsum((draws**2).sum(axis=3), axis=2)
    n = per_day * np.arange(1, days + 1)
    means = sums / n
    variances = (squares - n * means**2) / (n - 1)
    difference = means[0] - means[1]
    standard_error = np.sqrt(variances[0] / n + variances[1] / n)

    naive = np.any(np.abs(difference) > Z_975 * standard_error, axis=1).mean()
    half_width = sequential_half_width(standard_error, 2 * n)
    sequential = np.any(np.abs(difference) > half_width, axis=1).mean()

    assert sequential <= 0.06
    assert naive > 0.15
    assert naive > 3 * sequential


# --- interleaving ------------------------------------------------------------------------


def test_interleaving_preference_on_a_hand_case() -> None:
    # 60 treatment wins, 40 control wins, 20 ties.
    credit_treatment = np.array([2.0] * 60 + [0.0] * 40 + [1.0] * 20)
    credit_control = np.array([1.0] * 60 + [1.0] * 40 + [1.0] * 20)
    preference = interleaving_preference(credit_control, credit_treatment)
    assert (preference.wins_treatment, preference.wins_control, preference.ties) == (60, 40, 20)
    assert preference.share_treatment == 0.6
    # Wilson: centre (0.6 + z^2/200) / (1 + z^2/100) = 0.596301,
    # half-width z / (1 + z^2/100) * sqrt(0.24/100 + z^2/40000) = 0.094298.
    assert preference.low == pytest.approx(0.502003, abs=1e-6)
    assert preference.high == pytest.approx(0.690599, abs=1e-6)
    assert preference.p_value == pytest.approx(0.056888, abs=1e-6)  # exact binomial, 60/100
    assert preference.delta == pytest.approx(20 / 120)


def test_wilson_interval_agrees_with_scipy() -> None:
    for successes, trials in [(0, 10), (3, 10), (10, 10), (517, 1000)]:
        expected = stats.binomtest(successes, trials).proportion_ci(method="wilson")
        assert wilson_interval(successes, trials) == pytest.approx(
            (expected.low, expected.high), abs=1e-12
        )


def test_interleaving_without_any_preference_is_uninformative() -> None:
    preference = interleaving_preference(np.ones(5), np.ones(5))
    assert math.isnan(preference.share_treatment)
    assert (preference.low, preference.high, preference.p_value) == (0.0, 1.0, 1.0)
    assert preference.ties == 5
    assert preference.delta == 0.0


def test_interleaving_rejects_misaligned_credit() -> None:
    with pytest.raises(ValueError, match="same units"):
        interleaving_preference(np.ones(5), np.ones(4))


def test_paired_difference_is_a_one_sample_normal_interval() -> None:
    differences = np.array([1.0, 2.0, 3.0, 4.0])
    estimate = paired_difference(differences)
    standard_error = math.sqrt(5 / 3) / 2  # sample variance 5/3, n = 4
    assert estimate.difference == 2.5
    assert estimate.standard_error == pytest.approx(standard_error)
    assert estimate.low == pytest.approx(2.5 - Z_975 * standard_error)
    assert estimate.p_value == pytest.approx(2 * stats.norm.sf(2.5 / standard_error))
    assert estimate.n_treatment == estimate.n_control == 4
    assert math.isnan(estimate.relative)


# --- power ----------------------------------------------------------------------


def test_units_for_power_matches_the_hand_formula() -> None:
    z_sum = Z_975 + 0.8416212335729143
    assert units_for_power(1.0, 0.1) == pytest.approx(2 * z_sum**2 * 100)  # 1569.8
    assert units_for_power(1.0, -0.1, arms=1) == pytest.approx(z_sum**2 * 100)  # 784.9
    assert units_for_power(2.0, 0.1, alpha=0.05, power=0.8) == pytest.approx(
        4 * units_for_power(1.0, 0.1)
    )
    with pytest.raises(ValueError, match="arms"):
        units_for_power(1.0, 0.1, arms=3)
    with pytest.raises(ValueError, match="effect"):
        units_for_power(1.0, 0.0)


# --- cross-check against tea-tasting (a dev-only install) --------------------------------


def test_difference_in_means_cuped_and_srm_agree_with_tea_tasting() -> None:
    tea_tasting = pytest.importorskip("tea_tasting")
    pandas = pytest.importorskip("pandas")
    rng = np.random.default_rng(11)
    n_control, n_treatment = 2_600, 2_400
    covariate = rng.exponential(1.0, size=n_control + n_treatment)
    value = 0.5 * covariate + rng.exponential(1.0, size=covariate.size)
    value[n_control:] += 0.1
    data = pandas.DataFrame(
        {
            "variant": [0] * n_control + [1] * n_treatment,
            "value": value,
            "covariate": covariate,
        }
    )
    experiment = tea_tasting.Experiment(
        plain=tea_tasting.Mean("value", equal_var=False, use_t=False),
        adjusted=tea_tasting.Mean("value", "covariate", equal_var=False, use_t=False),
        sample_ratio=tea_tasting.SampleRatio(method="norm", correction=False),
    )
    result = experiment.analyze(data, control=0)

    plain = difference_in_means(value[n_control:], value[:n_control])
    assert plain.difference == pytest.approx(result["plain"].effect_size)
    assert plain.low == pytest.approx(result["plain"].effect_size_ci_lower)
    assert plain.high == pytest.approx(result["plain"].effect_size_ci_upper)
    assert plain.p_value == pytest.approx(result["plain"].pvalue)

    adjusted_values = cuped(value, covariate).adjusted
    adjusted = difference_in_means(adjusted_values[n_control:], adjusted_values[:n_control])
    assert adjusted.difference == pytest.approx(result["adjusted"].effect_size)
    # tea-tasting's CUPED: one pooled theta, per-arm variances of the adjusted metric.
    assert adjusted.low == pytest.approx(result["adjusted"].effect_size_ci_lower)
    assert adjusted.high == pytest.approx(result["adjusted"].effect_size_ci_upper)
    assert adjusted.p_value == pytest.approx(result["adjusted"].pvalue)

    srm = sample_ratio_mismatch([n_control, n_treatment], [0.5, 0.5])
    assert srm.p_value == pytest.approx(result["sample_ratio"].pvalue)
