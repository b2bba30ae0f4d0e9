"""The readout of an online experiment: health first, then the primary metric with an
always-valid interval, the other outcomes, CUPED and the exposure guardrails, per arm.

Inputs are plain tables: the exposure log of the experiment, the canonical interactions of
its period (outcomes are attributed to the latest exposure of (user, listing) before them,
within a window per event type), the interactions of the pre-period (CUPED's covariates:
each unit's purchases and views before the start) and the catalogue (sellers, prices,
creation times). Units are those the log saw: a unit enters the experiment when it is
first served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from components.config import ExperimentConfig
from components.experiments.attribution import attribute_outcomes
from components.experiments.guardrails import Guardrail, exposure_guardrails
from components.experiments.health import Health, experiment_health
from components.experiments.schema import CONTROL, TREATMENT
from components.experiments.statistics import (
    Estimate,
    Preference,
    confidence_sequence,
    cuped,
    difference_in_means,
    interleaving_preference,
    paired_difference,
    sequential_half_width,
    sequential_p_value,
)
from components.experiments.unit_table import cuped_covariates, unit_table

#: The outcomes read per arm (the unit table's columns).
METRICS = ("purchases", "views", "saves", "revenue")


@dataclass(frozen=True)
class Readout:
    experiment_id: str
    design: str
    start: str
    as_of: str
    days: float
    units: dict[str, int]
    requests: int
    slots: int
    health: Health
    primary_metric: str
    #: The decision's estimate: CUPED-adjusted (when on) difference with the always-valid
    #: interval; for interleaving, the per-unit credit difference (treatment - control).
    primary: Estimate
    #: The same with a fixed-horizon interval (what a single look at the end would use).
    primary_fixed: Estimate
    #: Per metric: raw and CUPED-adjusted differences with fixed-horizon intervals.
    metrics: dict[str, dict[str, Estimate]]
    #: Per metric: share of variance CUPED removed.
    cuped_variance_reduction: dict[str, float]
    guardrails: dict[str, Guardrail]
    preference: Preference | None = None
    #: One row per day: units so far, primary difference, always-valid and fixed bounds.
    daily: list[dict[str, float]] = field(default_factory=list)
    #: Simulation only: the global effect of 100% treatment vs 100% control on the primary
    #: metric, and the A/B estimate minus it (interference between arms that share supply).
    global_effect: float | None = None
    interference_bias: float | None = None

    @property
    def relative_low(self) -> float:
        """The primary's always-valid lower bound relative to the control mean."""
        return _relative(self.primary.low, self.primary.control_mean)

    @property
    def relative_high(self) -> float:
        return _relative(self.primary.high, self.primary.control_mean)

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["health"]["passed"] = self.health.passed
        result["relative_low"] = self.relative_low
        result["relative_high"] = self.relative_high
        return result


def read_out(
    exposures: pd.DataFrame,
    interactions: pd.DataFrame,
    pre_interactions: pd.DataFrame,
    items: pd.DataFrame,
    config: ExperimentConfig,
    start: pd.Timestamp,
    as_of: pd.Timestamp,
    treatment_share: float,
    design: str,
    global_effect: float | None = None,
) -> Readout:
    """Everything the decision and the report need, from the log and the outcomes up to
    `as_of`."""
    exposures = exposures[exposures["served_at"] < as_of]
    interactions = interactions[(interactions["ts"] >= start) & (interactions["ts"] < as_of)]
    if exposures.empty:
        raise ValueError(
            f"no exposures logged for the experiment between {start} and {as_of}: nothing "
            "to read out yet (is the experiment model serving, and logging to this log?)"
        )
    windows = {event: pd.Timedelta(gap) for event, gap in config.attribution_windows.items()}
    attributed = attribute_outcomes(exposures, interactions, windows)
    units = unit_table(exposures, attributed, pre_interactions, items, start, config)
    health = experiment_health(exposures, units, items, treatment_share, design, config)
    arms = units[units["variant"].isin([CONTROL, TREATMENT])]
    metric = config.interleaving_credit if design == "interleave" else config.primary_metric
    metrics, reductions = _metric_estimates(units, arms, design, config)
    primary, primary_fixed, preference = _primary(units, arms, design, config)
    guardrails = exposure_guardrails(exposures, items, design, config)
    daily = _daily(exposures, attributed, pre_interactions, items, start, as_of, design, config)
    bias = None if global_effect is None else primary_fixed.difference - global_effect
    return Readout(
        experiment_id=str(exposures["experiment_id"].iloc[0]),
        design=design,
        start=start.isoformat(),
        as_of=as_of.isoformat(),
        days=(as_of - start) / pd.Timedelta(days=1),
        units={
            str(variant): int(count)
            for variant, count in units["variant"].value_counts().sort_index().items()
        },
        requests=int(exposures["request_id"].nunique()),
        slots=len(exposures),
        health=health,
        primary_metric=metric,
        primary=primary,
        primary_fixed=primary_fixed,
        metrics=metrics,
        cuped_variance_reduction=reductions,
        guardrails=guardrails,
        preference=preference,
        daily=daily,
        global_effect=global_effect,
        interference_bias=bias,
    )


def _metric_estimates(
    units: pd.DataFrame, arms: pd.DataFrame, design: str, config: ExperimentConfig
) -> tuple[dict[str, dict[str, Estimate]], dict[str, float]]:
    estimates: dict[str, dict[str, Estimate]] = {}
    reductions: dict[str, float] = {}
    covariates = cuped_covariates(arms)
    for metric in METRICS:
        if design == "interleave":
            difference = (units[f"{metric}_{TREATMENT}"] - units[f"{metric}_{CONTROL}"]).to_numpy(
                float
            )
            estimates[metric] = {"raw": paired_difference(difference, config.alpha)}
            continue
        values = arms[metric].to_numpy(float)
        treated = (arms["variant"] == TREATMENT).to_numpy()
        raw = difference_in_means(values[treated], values[~treated], config.alpha)
        adjusted = cuped(values, covariates)
        reductions[metric] = adjusted.variance_reduction
        estimates[metric] = {
            "raw": raw,
            "cuped": _with_means(
                difference_in_means(
                    adjusted.adjusted[treated], adjusted.adjusted[~treated], config.alpha
                ),
                raw,
            ),
        }
    return estimates, reductions


def _primary(
    units: pd.DataFrame, arms: pd.DataFrame, design: str, config: ExperimentConfig
) -> tuple[Estimate, Estimate, Preference | None]:
    metric = config.primary_metric
    if design == "interleave":
        metric = config.interleaving_credit
        credit_c = units[f"{metric}_{CONTROL}"].to_numpy(float)
        credit_t = units[f"{metric}_{TREATMENT}"].to_numpy(float)
        fixed = paired_difference(credit_t - credit_c, config.alpha)
        fixed = _with_arm_means(fixed, credit_t.mean(), credit_c.mean())
        sequential = _paired_sequential(fixed, config)
        preference = interleaving_preference(credit_c, credit_t, config.alpha)
        return sequential, fixed, preference
    values = arms[metric].to_numpy(float)
    if config.cuped:
        values = cuped(values, cuped_covariates(arms)).adjusted
    treated = (arms["variant"] == TREATMENT).to_numpy()
    raw_means = arms[metric].to_numpy(float)
    fixed = difference_in_means(values[treated], values[~treated], config.alpha)
    sequential = confidence_sequence(
        values[treated], values[~treated], config.alpha, config.sequential_tuning_units
    )
    means = (raw_means[treated].mean(), raw_means[~treated].mean())
    return (
        _with_arm_means(sequential, *means),
        _with_arm_means(fixed, *means),
        None,
    )


def _paired_sequential(fixed: Estimate, config: ExperimentConfig) -> Estimate:
    """The always-valid interval around a per-unit mean difference (n units)."""
    n = fixed.n_treatment
    half = float(
        sequential_half_width(
            fixed.standard_error, max(n, 1), config.alpha, config.sequential_tuning_units
        )
    )
    p_value = sequential_p_value(
        fixed.difference,
        fixed.standard_error,
        max(n, 1),
        config.alpha,
        config.sequential_tuning_units,
    )
    return Estimate(
        **{
            **asdict(fixed),
            "low": fixed.difference - half,
            "high": fixed.difference + half,
            "p_value": p_value,
        }
    )


def _with_arm_means(estimate: Estimate, treatment_mean: float, control_mean: float) -> Estimate:
    """The estimate with the raw (unadjusted) arm means, so relative figures are read
    against what control units actually did."""
    return Estimate(
        **{
            **asdict(estimate),
            "treatment_mean": float(treatment_mean),
            "control_mean": float(control_mean),
            "relative": _relative(estimate.difference, float(control_mean)),
        }
    )


def _with_means(adjusted: Estimate, raw: Estimate) -> Estimate:
    return _with_arm_means(adjusted, raw.treatment_mean, raw.control_mean)


def _relative(value: float, base: float) -> float:
    return float(value / base) if base else float("nan")


# --- Daily looks ---------------------------------------------------------------------


def _daily(
    exposures: pd.DataFrame,
    attributed: pd.DataFrame,
    pre_interactions: pd.DataFrame,
    items: pd.DataFrame,
    start: pd.Timestamp,
    as_of: pd.Timestamp,
    design: str,
    config: ExperimentConfig,
) -> list[dict[str, float]]:
    """The primary estimate as it read at the end of each day (the plot of the interval
    over days): the always-valid bounds may be looked at daily, the fixed ones may not."""
    rows = []
    n_days = int(np.ceil((as_of - start) / pd.Timedelta(days=1)))
    for day in range(1, n_days + 1):
        cut = min(start + pd.Timedelta(days=day), as_of)
        seen = exposures[exposures["served_at"] < cut]
        if seen.empty:
            continue
        outcomes = attributed[attributed["ts"] < cut]
        units = unit_table(seen, outcomes, pre_interactions, items, start, config)
        arms = units[units["variant"].isin([CONTROL, TREATMENT])]
        if design == "ab" and arms["variant"].nunique() < 2:
            continue
        if design == "interleave" and len(units) < 2:
            continue
        try:
            sequential, fixed, _ = _primary(units, arms, design, config)
        except ValueError:
            continue  # too few units in an arm for an interval yet
        rows.append(
            {
                "day": float(day),
                "units": float(len(units)),
                "difference": fixed.difference,
                "relative": fixed.relative,
                "low": sequential.low,
                "high": sequential.high,
                "fixed_low": fixed.low,
                "fixed_high": fixed.high,
                "control_mean": fixed.control_mean,
            }
        )
    return rows
