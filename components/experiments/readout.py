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
import scipy.sparse as sp

from components.config import ExperimentConfig
from components.evaluation.beyond_accuracy import gini
from components.experiments.attribution import attribute_outcomes
from components.experiments.schema import CONTROL, TREATMENT
from components.experiments.statistics import (
    Estimate,
    Preference,
    confidence_sequence,
    cuped,
    difference_in_means,
    interleaving_preference,
    paired_difference,
    sample_ratio_mismatch,
    sequential_half_width,
    sequential_p_value,
)

#: Outcomes read per unit: the events counted (distinct listings), revenue from prices.
OUTCOME_EVENTS = {"purchases": "purchase", "views": "view", "saves": "save"}
METRICS = ("purchases", "views", "saves", "revenue")
#: A listing is new when served within this long of its creation; a seller is small with
#: at most this many listings in the catalogue (the offline evaluation's defaults).
NEW_LISTING_AGE = pd.Timedelta(days=7)
SMALL_SELLER_MAX_LISTINGS = 3
GUARDRAILS = ("gini_sellers", "new_listing_exposure", "small_seller_exposure")
#: CUPED's covariates come from each unit's events of each kind in the pre-period
#: (activity shows in every kind; purchases alone are too rare to say much about a unit):
#: see `cuped_covariates`.
PRE_PERIOD_COVARIATES = {
    "pre_views": "view",
    "pre_likes": "like",
    "pre_saves": "save",
    "pre_bags": "add_to_bag",
    "pre_purchases": "purchase",
}


@dataclass(frozen=True)
class Health:
    """Checks that must pass before any effect is read."""

    srm_chi2: float
    srm_p_value: float
    srm_alarm: bool
    #: Share of logged requests whose slots are complete (positions 1..n, no gap, no
    #: missing field).
    log_completeness: float
    #: Units served by both arms (an A/B unit must stay in its arm).
    units_in_both_arms: int
    #: Slots that showed a listing already sold when served.
    sold_listings_served: int

    @property
    def passed(self) -> bool:
        return (
            not self.srm_alarm
            and self.log_completeness >= 0.999
            and self.units_in_both_arms == 0
            and self.sold_listings_served == 0
        )

    def problems(self, srm_alpha: float) -> list[str]:
        found = []
        if self.srm_alarm:
            found.append(
                f"sample-ratio mismatch: chi-square p={self.srm_p_value:.2e} < {srm_alpha} "
                "(the arms did not get the planned shares of units; the effect cannot be trusted)"
            )
        if self.log_completeness < 0.999:
            found.append(f"exposure log incomplete: {self.log_completeness:.2%} of requests whole")
        if self.units_in_both_arms:
            found.append(f"{self.units_in_both_arms} units were served by both arms")
        if self.sold_listings_served:
            found.append(f"{self.sold_listings_served} served slots showed a sold listing")
        return found


@dataclass(frozen=True)
class Guardrail:
    """An exposure figure per arm, treatment - control, and its unit-bootstrap interval."""

    control: float
    treatment: float
    difference: float
    low: float
    high: float


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
    health = _health(exposures, units, items, treatment_share, design, config)
    arms = units[units["variant"].isin([CONTROL, TREATMENT])]
    metric = config.interleaving_credit if design == "interleave" else config.primary_metric
    metrics, reductions = _metric_estimates(units, arms, design, config)
    primary, primary_fixed, preference = _primary(units, arms, design, config)
    guardrails = _guardrails(exposures, items, design, config)
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


def unit_table(
    exposures: pd.DataFrame,
    attributed: pd.DataFrame,
    pre_interactions: pd.DataFrame,
    items: pd.DataFrame,
    start: pd.Timestamp,
    config: ExperimentConfig,
) -> pd.DataFrame:
    """One row per unit: its variant (`both` when served by two arms), its outcomes (per
    team too under interleaving) and its pre-period covariates."""
    variants = exposures.groupby("unit_id")["variant"].agg(
        lambda v: v.iloc[0] if v.nunique() == 1 else "both"
    )
    units = pd.DataFrame({"variant": variants})
    price = items.set_index("item_id")["price"]
    outcomes = attributed.drop_duplicates(["user_id", "item_id", "event"])
    outcomes = outcomes.assign(revenue=outcomes["item_id"].map(price).fillna(0.0))
    for metric, event in OUTCOME_EVENTS.items():
        chosen = outcomes[outcomes["event"] == event]
        units[metric] = chosen.groupby("user_id").size().reindex(units.index, fill_value=0)
        for team in (CONTROL, TREATMENT):
            credited = chosen[chosen["team"] == team].groupby("user_id").size()
            units[f"{metric}_{team}"] = credited.reindex(units.index, fill_value=0)
    bought = outcomes[outcomes["event"] == "purchase"]
    units["revenue"] = (
        bought.groupby("user_id")["revenue"].sum().reindex(units.index, fill_value=0.0)
    )
    for team in (CONTROL, TREATMENT):
        credited = bought[bought["team"] == team].groupby("user_id")["revenue"].sum()
        units[f"revenue_{team}"] = credited.reindex(units.index, fill_value=0.0)
    pre_start = start - pd.Timedelta(config.pre_period)
    pre = pre_interactions[(pre_interactions["ts"] >= pre_start) & (pre_interactions["ts"] < start)]
    for name, event in PRE_PERIOD_COVARIATES.items():
        counts = pre[pre["event"] == event].groupby("user_id").size()
        units[name] = counts.reindex(units.index, fill_value=0).astype(float)
    first_seen = pre_interactions.groupby("user_id")["ts"].min().reindex(units.index)
    present = ((start - first_seen) / pd.Timedelta(days=1)).fillna(0.0)
    units["pre_days"] = present.clip(0.0, pd.Timedelta(config.pre_period) / pd.Timedelta(days=1))
    units.index.name = "unit_id"
    return units


def cuped_covariates(units: pd.DataFrame) -> np.ndarray:
    """CUPED's design matrix: each pre-period count, the same as a rate per day the unit
    was on the market then (a user who joined a week before the start has a week of
    history, not less activity), the square roots of both (activity is long-tailed and
    outcomes grow less than linearly in it), and the days present: more variance removed
    than the counts alone (figures in docs/models.md)."""
    counts = units[list(PRE_PERIOD_COVARIATES)].to_numpy(float)
    days = units["pre_days"].to_numpy(float)
    rates = counts / np.maximum(days, 1.0)[:, None]
    return np.column_stack([counts, np.sqrt(counts), rates, np.sqrt(rates), days])


def _health(
    exposures: pd.DataFrame,
    units: pd.DataFrame,
    items: pd.DataFrame,
    treatment_share: float,
    design: str,
    config: ExperimentConfig,
) -> Health:
    if design == "ab":
        counts = [int((units["variant"] == arm).sum()) for arm in (CONTROL, TREATMENT)]
        srm = sample_ratio_mismatch(
            counts, [1 - treatment_share, treatment_share], config.srm_alpha
        )
        srm_chi2, srm_p, alarm = srm.chi2, srm.p_value, srm.alarm
    else:
        srm_chi2, srm_p, alarm = 0.0, 1.0, False
    return Health(
        srm_chi2=float(srm_chi2),
        srm_p_value=float(srm_p),
        srm_alarm=bool(alarm),
        log_completeness=log_completeness(exposures),
        units_in_both_arms=int((units["variant"] == "both").sum()),
        sold_listings_served=sold_listings_served(exposures, items),
    )


def log_completeness(exposures: pd.DataFrame) -> float:
    """Share of requests whose positions run 1..n without gap or repeat, with every
    required field present."""
    required = ["request_id", "served_at", "unit_id", "variant", "item_id", "model_version"]
    whole = exposures[required].notna().all(axis=1)
    groups = exposures.assign(whole=whole).groupby("request_id")
    summary = groups.agg(
        n=("position", "size"),
        top=("position", "max"),
        distinct=("position", "nunique"),
        low=("position", "min"),
        whole=("whole", "all"),
    )
    ok = (
        (summary["low"] == 1)
        & (summary["top"] == summary["n"])
        & (summary["distinct"] == summary["n"])
    )
    return float((ok & summary["whole"]).mean()) if len(summary) else 1.0


def sold_listings_served(exposures: pd.DataFrame, items: pd.DataFrame) -> int:
    sold_at = exposures["item_id"].map(items.set_index("item_id")["sold_at"])
    return int((sold_at.notna() & (sold_at <= exposures["served_at"])).sum())


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


# --- Exposure guardrails -------------------------------------------------------------


def _guardrails(
    exposures: pd.DataFrame, items: pd.DataFrame, design: str, config: ExperimentConfig
) -> dict[str, Guardrail]:
    """Seller-exposure Gini, new-listing and small-seller shares of each arm's slots, with
    a Poisson bootstrap over units (each unit's slots resampled together)."""
    arm = exposures["team"] if design == "interleave" else exposures["variant"]
    catalogue = items.set_index("item_id")
    sellers = pd.factorize(catalogue["seller_id"])
    seller_of = pd.Series(sellers[0], index=catalogue.index)
    listings = np.bincount(sellers[0], minlength=len(sellers[1]))
    seller = exposures["item_id"].map(seller_of).fillna(-1).to_numpy(np.int64)
    created = exposures["item_id"].map(catalogue["created_at"])
    new = ((exposures["served_at"] - created) <= NEW_LISTING_AGE).to_numpy(bool)
    small = (seller >= 0) & (listings[np.maximum(seller, 0)] <= SMALL_SELLER_MAX_LISTINGS)
    rng = np.random.default_rng(0)
    statistics: dict[str, dict[str, np.ndarray]] = {}
    for name in (CONTROL, TREATMENT):
        rows = (arm == name).to_numpy()
        unit_codes, unit = np.unique(exposures["unit_id"].to_numpy()[rows], return_inverse=True)
        known = seller[rows] >= 0
        counts = sp.csr_matrix(
            (np.ones(int(known.sum())), (unit[known], seller[rows][known])),
            shape=(len(unit_codes), len(listings)),
        )
        flags = sp.csr_matrix(
            np.column_stack(
                [
                    np.bincount(unit, minlength=len(unit_codes)),
                    np.bincount(unit, weights=new[rows], minlength=len(unit_codes)),
                    np.bincount(unit, weights=small[rows], minlength=len(unit_codes)),
                ]
            )
        )
        weights = np.vstack(
            [
                np.ones(len(unit_codes)),
                rng.poisson(1.0, (config.bootstrap_resamples, len(unit_codes))),
            ]
        )
        per_seller = np.asarray((sp.csr_matrix(weights) @ counts).todense())
        totals = np.asarray((sp.csr_matrix(weights) @ flags).todense())
        statistics[name] = {
            "gini_sellers": np.array([gini(row) for row in per_seller]),
            "new_listing_exposure": totals[:, 1] / np.maximum(totals[:, 0], 1.0),
            "small_seller_exposure": totals[:, 2] / np.maximum(totals[:, 0], 1.0),
        }
    guardrails = {}
    for name in GUARDRAILS:
        control, treatment = statistics[CONTROL][name], statistics[TREATMENT][name]
        point = float(treatment[0] - control[0])
        resampled = treatment[1:] - control[1:]
        # Basic (pivotal) bootstrap interval: valid for list-level statistics whose
        # bootstrap distribution is shifted from the point (a Gini is).
        low, high = np.quantile(resampled, [1 - config.alpha / 2, config.alpha / 2])
        guardrails[name] = Guardrail(
            control=float(control[0]),
            treatment=float(treatment[0]),
            difference=point,
            low=float(2 * point - low),
            high=float(2 * point - high),
        )
    return guardrails


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
