"""The health of an experiment, checked before any effect is read: sample-ratio mismatch,
a whole exposure log, units kept in their arm, no sold listing served."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from components.config import ExperimentConfig
from components.experiments.schema import CONTROL, TREATMENT
from components.experiments.statistics import sample_ratio_mismatch


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


def experiment_health(
    exposures: pd.DataFrame,
    units: pd.DataFrame,
    items: pd.DataFrame,
    treatment_share: float,
    design: str,
    config: ExperimentConfig,
) -> Health:
    """The health checks of the experiment so far (sample ratio only under A/B)."""
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
