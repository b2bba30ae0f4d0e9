"""The statistics of an online-experiment readout: is the split healthy, how big is the
effect, and can we say so yet.

- Health: a sample-ratio mismatch check (chi-square goodness of fit); a mismatch means the
  assignment or the logging is broken and no effect below it can be trusted.
- Variance reduction: CUPED (Deng, Xu, Kohavi & Walker 2013, "Improving the sensitivity of
  online controlled experiments by utilizing pre-experiment data").
- Effects: a fixed-horizon Welch interval for one planned look, and the asymptotic
  confidence sequence of Waudby-Smith, Arnold, Wu, Ramdas & Howard ("Time-uniform central
  limit theory and asymptotic confidence sequences", 2021/2023) for daily looks.
- Interleaving: per-unit preference under team-draft interleaving (Chapelle, Joachims,
  Radlinski & Yue 2012, "Large-scale validation and analysis of interleaved search
  evaluation") and the mean per-unit credit difference.
- Guardrails and planning: the Gini coefficient of exposure and the units a test needs.

Plain numpy / scipy: every function takes arrays and returns a frozen dataclass or a float,
so a flow, a notebook and a test all read the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

#: Expected shares must sum to 1 within this tolerance (shares typed as 0.333... round).
_SHARE_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SampleRatioCheck:
    """Chi-square goodness of fit of the units each arm received against the planned split."""

    chi2: float
    p_value: float
    alarm: bool
    observed_shares: tuple[float, ...]
    expected_shares: tuple[float, ...]


@dataclass(frozen=True, eq=False)
class CupedResult:
    """CUPED-adjusted outcomes (same order as the input), the fitted coefficients and the
    share of the outcome's variance removed. Compared by identity: it holds arrays."""

    adjusted: np.ndarray
    theta: np.ndarray
    variance_reduction: float


@dataclass(frozen=True)
class Estimate:
    """A treatment-minus-control difference with its interval and two-sided p-value.

    `relative` is `difference / control_mean` (nan when the control mean is 0); the interval
    is for the absolute difference only. A paired estimate has no arm means (nan) and counts
    every unit in both arms.
    """

    difference: float
    relative: float
    standard_error: float
    low: float
    high: float
    p_value: float
    n_treatment: int
    n_control: int
    treatment_mean: float
    control_mean: float


@dataclass(frozen=True)
class Preference:
    """Which arm interleaved units preferred: the treatment's share of decided units with a
    Wilson interval and a binomial p-value, the counts, and Δ_AB over all units."""

    share_treatment: float
    low: float
    high: float
    wins_control: int
    wins_treatment: int
    ties: int
    p_value: float
    delta: float


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"{name}={alpha} must lie strictly between 0 and 1 (e.g. 0.05)")


def _as_sample(values: npt.ArrayLike, name: str, minimum: int) -> np.ndarray:
    """A finite 1-D float array with at least `minimum` entries, or a ValueError naming it."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} has shape {array.shape}: pass one value per unit as a 1-D array")
    if array.size < minimum:
        raise ValueError(
            f"{name} has {array.size} values; at least {minimum} are needed "
            "(wait for more units before reading this out)"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values: drop or impute them first")
    return array


def _z(alpha: float) -> float:
    """The two-sided normal critical value z_{1-alpha/2}."""
    return float(stats.norm.ppf(1.0 - alpha / 2.0))


def _normal_p_value(estimate: float, standard_error: float) -> float:
    """Two-sided normal p-value; a zero standard error gives 1 for a zero estimate, else 0."""
    if standard_error == 0.0:
        return 1.0 if estimate == 0.0 else 0.0
    return float(2.0 * stats.norm.sf(abs(estimate) / standard_error))


def sample_ratio_mismatch(
    counts: Sequence[int], expected_shares: Sequence[float], alpha: float = 0.001
) -> SampleRatioCheck:
    """Chi-square goodness of fit of the arms' unit counts against the planned shares.

    Alarm at p < alpha; the default 0.001 is GrowthBook's, strict because the check runs on
    every readout and a false alarm stops an experiment.
    """
    _check_alpha(alpha)
    observed = np.asarray(counts)
    shares = np.asarray(expected_shares, dtype=float)
    if observed.ndim != 1 or observed.size < 2:
        raise ValueError(f"counts {list(counts)} must hold one unit count per arm, two or more")
    if not np.issubdtype(observed.dtype, np.integer) or np.any(observed < 0):
        raise ValueError(f"counts {list(counts)} must be non-negative integers (units per arm)")
    if observed.sum() == 0:
        raise ValueError("counts are all zero: no unit has been assigned yet")
    if shares.shape != observed.shape:
        raise ValueError(
            f"expected_shares has {shares.size} entries for {observed.size} counts: "
            "give one planned share per arm, in the same order"
        )
    if not np.all(np.isfinite(shares)) or np.any(shares <= 0.0):
        raise ValueError(f"expected_shares {list(expected_shares)} must all be positive")
    if abs(shares.sum() - 1.0) > _SHARE_SUM_TOLERANCE:
        raise ValueError(
            f"expected_shares sum to {shares.sum()}: they must sum to 1 (e.g. [0.5, 0.5])"
        )
    total = int(observed.sum())
    result = stats.chisquare(observed.astype(float), f_exp=shares * total)
    p_value = float(result.pvalue)
    return SampleRatioCheck(
        chi2=float(result.statistic),
        p_value=p_value,
        alarm=p_value < alpha,
        observed_shares=tuple(float(c) / total for c in observed),
        expected_shares=tuple(float(s) for s in shares),
    )


def cuped(y: np.ndarray, covariates: np.ndarray) -> CupedResult:
    """Regress the outcome on centred pre-period covariates and subtract the fit.

    Pass every arm's units together: one theta for all arms keeps the adjusted difference
    in means unbiased (Deng et al. 2013), and centring keeps the adjusted mean equal to the
    raw mean. Split `adjusted` by arm afterwards. Constant covariates carry no information
    and get theta 0. With one covariate theta is cov(x, y) / var(x).
    """
    outcome = _as_sample(y, "y", minimum=2)
    design = np.asarray(covariates, dtype=float)
    if design.ndim == 1:
        design = design[:, np.newaxis]
    if design.ndim != 2 or design.shape[0] != outcome.size:
        raise ValueError(
            f"covariates has shape {np.shape(covariates)} for {outcome.size} outcomes: "
            "pass shape (n,) or (n, p), one row per unit in y's order"
        )
    if design.shape[1] == 0:
        raise ValueError("covariates has no columns: pass at least one pre-period metric")
    if not np.all(np.isfinite(design)):
        raise ValueError(
            "covariates hold NaN or infinite values: fill units without pre-period data "
            "(e.g. with 0 plus an indicator column) first"
        )
    varying = np.ptp(design, axis=0) > 0.0
    theta = np.zeros(design.shape[1])
    adjusted = outcome.copy()
    if np.any(varying):
        centred = design[:, varying] - design[:, varying].mean(axis=0)
        fitted, *_ = np.linalg.lstsq(centred, outcome - outcome.mean(), rcond=None)
        theta[varying] = fitted
        adjusted = outcome - centred @ fitted
    outcome_variance = float(outcome.var())
    reduction = 0.0 if outcome_variance == 0.0 else 1.0 - float(adjusted.var()) / outcome_variance
    return CupedResult(adjusted=adjusted, theta=theta, variance_reduction=reduction)


def difference_in_means(
    treatment: np.ndarray, control: np.ndarray, alpha: float = 0.05
) -> Estimate:
    """Treatment minus control mean with a Welch standard error and a normal interval.

    Valid for one look planned in advance (fixed horizon); for repeated looks use
    `confidence_sequence`. Unequal variances are the rule when a ranker changes behaviour.
    """
    _check_alpha(alpha)
    treated = _as_sample(treatment, "treatment", minimum=2)
    controls = _as_sample(control, "control", minimum=2)
    treatment_mean = float(treated.mean())
    control_mean = float(controls.mean())
    difference = treatment_mean - control_mean
    standard_error = math.sqrt(
        float(treated.var(ddof=1)) / treated.size + float(controls.var(ddof=1)) / controls.size
    )
    half_width = _z(alpha) * standard_error
    return Estimate(
        difference=difference,
        relative=difference / control_mean if control_mean != 0.0 else math.nan,
        standard_error=standard_error,
        low=difference - half_width,
        high=difference + half_width,
        p_value=_normal_p_value(difference, standard_error),
        n_treatment=int(treated.size),
        n_control=int(controls.size),
        treatment_mean=treatment_mean,
        control_mean=control_mean,
    )


def sequential_rho(alpha: float, tuning_units: int) -> float:
    """The normal mixture's spread rho, tuned so the sequence is tightest near
    `tuning_units` total units (Waudby-Smith et al., two-sided tuning)."""
    _check_alpha(alpha)
    if tuning_units < 1:
        raise ValueError(
            f"tuning_units={tuning_units} must be a positive unit count: the total units "
            "(both arms) you expect when the experiment is read"
        )
    minus_two_log_alpha = -2.0 * math.log(alpha)
    return math.sqrt((minus_two_log_alpha + math.log(minus_two_log_alpha + 1.0)) / tuning_units)


def sequential_half_width(
    standard_error: np.ndarray | float,
    n: np.ndarray | float,
    alpha: float = 0.05,
    tuning_units: int = 5000,
) -> np.ndarray:
    """Half-width of the asymptotic confidence sequence, elementwise over arrays of looks.

    With sigma^2 = standard_error^2 * n (the per-unit variance behind the estimate) and
    rho from `sequential_rho`, the half-width is
    sigma * sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * ln(sqrt(n rho^2 + 1) / alpha)).
    Vectorised so a readout (or a simulation) scores many looks at once.
    """
    rho = sequential_rho(alpha, tuning_units)
    errors = np.asarray(standard_error, dtype=float)
    units = np.asarray(n, dtype=float)
    if np.any(errors < 0.0) or np.any(units < 1.0):
        raise ValueError("standard_error must be >= 0 and n >= 1 (total units of both arms)")
    spread = units * rho**2 + 1.0
    factor = 2.0 * spread / (units**2 * rho**2) * np.log(np.sqrt(spread) / alpha)
    return np.sqrt(errors**2 * units) * np.sqrt(factor)


def sequential_p_value(
    difference: float, standard_error: float, n: int, alpha: float = 0.05, tuning_units: int = 5000
) -> float:
    """Always-valid p-value: 1 / the normal-mixture e-value, with rho held at its value
    tuned for `alpha` (Waudby-Smith et al.).

    It is the smallest level at which the sequence with that same rho excludes 0, so
    p < alpha exactly when the alpha-level sequence does; by Ville's inequality it stays
    valid under continuous monitoring at every level. Letting rho follow the level instead
    would not nest the sequences, so the infimum would not be a valid p-value.
    """
    rho = sequential_rho(alpha, tuning_units)
    if standard_error < 0.0 or n < 1:
        raise ValueError("standard_error must be >= 0 and n >= 1 (total units of both arms)")
    if standard_error == 0.0:
        return 1.0 if difference == 0.0 else 0.0
    spread = n * rho**2 + 1.0
    t_squared = difference**2 / standard_error**2
    log_e_value = (n * rho**2) * t_squared / (2.0 * spread) - 0.5 * math.log(spread)
    return 1.0 if log_e_value <= 0.0 else math.exp(-log_e_value)


def confidence_sequence(
    treatment: np.ndarray,
    control: np.ndarray,
    alpha: float = 0.05,
    tuning_units: int = 5000,
) -> Estimate:
    """Difference in means with an always-valid interval: look daily, stop any time, and the
    chance of ever excluding a true zero stays about alpha (asymptotically).

    The asymptotic confidence sequence of Waudby-Smith et al. as GrowthBook applies it to a
    difference in means: n is both arms' units, and `tuning_units` the total where it is
    tightest (GrowthBook's default 5000). The p-value is `sequential_p_value`.
    """
    fixed = difference_in_means(treatment, control, alpha)
    n = fixed.n_treatment + fixed.n_control
    half_width = float(sequential_half_width(fixed.standard_error, n, alpha, tuning_units))
    return Estimate(
        difference=fixed.difference,
        relative=fixed.relative,
        standard_error=fixed.standard_error,
        low=fixed.difference - half_width,
        high=fixed.difference + half_width,
        p_value=sequential_p_value(fixed.difference, fixed.standard_error, n, alpha, tuning_units),
        n_treatment=fixed.n_treatment,
        n_control=fixed.n_control,
        treatment_mean=fixed.treatment_mean,
        control_mean=fixed.control_mean,
    )


def wilson_interval(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for a proportion: stays inside [0, 1] and keeps its coverage
    near 0 or 1 and in small samples, where the normal (Wald) interval does not."""
    _check_alpha(alpha)
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"successes={successes}, trials={trials}: need 0 <= successes <= trials")
    if trials == 0:
        return 0.0, 1.0
    z = _z(alpha)
    share = successes / trials
    denominator = 1.0 + z**2 / trials
    centre = (share + z**2 / (2.0 * trials)) / denominator
    half_width = (
        z / denominator * math.sqrt(share * (1.0 - share) / trials + z**2 / (4.0 * trials**2))
    )
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def interleaving_preference(
    credit_control: np.ndarray, credit_treatment: np.ndarray, alpha: float = 0.05
) -> Preference:
    """Per-unit preference under team-draft interleaving (Chapelle et al. 2012).

    A unit prefers the arm credited with more of its outcomes (clicks, purchases); ties carry
    no preference. The treatment's share of decided units gets a Wilson interval and an
    exact binomial test against 0.5; Δ_AB = (wins_t - wins_c) / all units is the usual
    summary, comparable across experiments of different tie rates only with care.
    """
    _check_alpha(alpha)
    control = _as_sample(credit_control, "credit_control", minimum=1)
    treatment = _as_sample(credit_treatment, "credit_treatment", minimum=1)
    if control.shape != treatment.shape:
        raise ValueError(
            f"credit_control has {control.size} units and credit_treatment {treatment.size}: "
            "pass both arms' credit for the same units, aligned"
        )
    wins_treatment = int(np.sum(treatment > control))
    wins_control = int(np.sum(control > treatment))
    ties = int(control.size) - wins_treatment - wins_control
    decided = wins_treatment + wins_control
    delta = (wins_treatment - wins_control) / control.size
    if decided == 0:
        return Preference(
            share_treatment=math.nan,
            low=0.0,
            high=1.0,
            wins_control=0,
            wins_treatment=0,
            ties=ties,
            p_value=1.0,
            delta=delta,
        )
    low, high = wilson_interval(wins_treatment, decided, alpha)
    return Preference(
        share_treatment=wins_treatment / decided,
        low=low,
        high=high,
        wins_control=wins_control,
        wins_treatment=wins_treatment,
        ties=ties,
        p_value=float(stats.binomtest(wins_treatment, decided, 0.5).pvalue),
        delta=delta,
    )


def paired_difference(per_unit_differences: np.ndarray, alpha: float = 0.05) -> Estimate:
    """Mean of per-unit differences (e.g. treatment minus control credit under interleaving)
    with a normal interval: each unit is its own control, so no Welch term for two arms."""
    _check_alpha(alpha)
    differences = _as_sample(per_unit_differences, "per_unit_differences", minimum=2)
    mean = float(differences.mean())
    standard_error = float(differences.std(ddof=1)) / math.sqrt(differences.size)
    half_width = _z(alpha) * standard_error
    return Estimate(
        difference=mean,
        relative=math.nan,
        standard_error=standard_error,
        low=mean - half_width,
        high=mean + half_width,
        p_value=_normal_p_value(mean, standard_error),
        n_treatment=int(differences.size),
        n_control=int(differences.size),
        treatment_mean=math.nan,
        control_mean=math.nan,
    )


def units_for_power(
    standard_deviation: float,
    effect: float,
    alpha: float = 0.05,
    power: float = 0.8,
    arms: int = 2,
) -> float:
    """Units per arm to detect `effect` with a two-sided level-alpha normal test.

    arms=2 (two-sample, equal split): n = 2 (z_{1-alpha/2} + z_power)^2 sd^2 / effect^2,
    where sd is the per-unit standard deviation of the metric within one arm (assumed
    equal in both; after CUPED, the adjusted one). arms=1 (one-sample or paired, e.g.
    interleaving): n = (z_{1-alpha/2} + z_power)^2 sd^2 / effect^2, where sd is that of the
    per-unit difference. Unrounded: round up.
    """
    _check_alpha(alpha)
    _check_alpha(power, "power")
    if not math.isfinite(standard_deviation) or standard_deviation <= 0.0:
        raise ValueError(f"standard_deviation={standard_deviation} must be a positive number")
    if not math.isfinite(effect) or effect == 0.0:
        raise ValueError(f"effect={effect} must be a non-zero difference to detect")
    if arms not in (1, 2):
        raise ValueError(f"arms={arms}: use 2 for a two-sample test, 1 for a paired one")
    z_sum = _z(alpha) + float(stats.norm.ppf(power))
    return arms * z_sum**2 * standard_deviation**2 / effect**2
