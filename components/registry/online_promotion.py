"""The online gate: does an experiment's readout move `champion` to its treatment version?

Checks, in order: health (no sample-ratio mismatch, a whole exposure log, no unit in both
arms, no sold listing served), enough evidence (at least `min_days` and `min_units`), the
primary metric's always-valid lower bound relative to control above `-margin`
(non-inferiority; above 0 is superiority, reported as such), and the offline gate's
exposure guardrails on the served slots (seller-exposure Gini not clearly up by more than
`max_seller_gini_increase`, new-listing share not clearly down by more than
`max_new_listing_exposure_drop`). The always-valid interval may be read every day: the
verdict is `continue` until the evidence is enough, `promoted` as soon as every check
passes, `rejected` on a failed health check or an always-valid interval wholly below the
margin (at any look), on a guardrail (once the evidence is enough: its interval is a
fixed-horizon one), or at `max_days` without a pass. A promotion goes through
`champion_alias.apply_decision` (tags `promotion.online.*`), which refuses it if `champion`
moved away from the control version meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from components.config import ExperimentConfig, PromotionConfig
from components.experiments.readout import Readout
from components.registry.promotion_decision import Check, PromotionDecision
from components.registry.promotion_smoke import SmokeResult

Verdict = Literal["promoted", "rejected", "continue"]


@dataclass(frozen=True)
class OnlineVerdict:
    verdict: Verdict
    checks: list[Check]
    #: What `apply_decision` records (None while the experiment continues).
    decision: PromotionDecision | None

    @property
    def reasons(self) -> list[str]:
        return [check.detail for check in self.checks if not check.passed]


def decide_online(
    readout: Readout,
    experiment: ExperimentConfig,
    promotion: PromotionConfig,
    control_version: int,
) -> OnlineVerdict:
    """The verdict on the experiment's treatment from its latest readout."""
    health = readout.health
    healthy = Check(
        "online health",
        health.passed,
        health.srm_p_value,
        experiment.srm_alpha,
        "; ".join(health.problems(experiment.srm_alpha)) or "health checks passed",
    )
    units = sum(count for variant, count in readout.units.items() if variant != "both")
    enough = Check(
        "online evidence",
        readout.days >= experiment.min_days and units >= experiment.min_units,
        float(units),
        float(experiment.min_units),
        f"{readout.days:.1f} days and {units} units (experiment.min_days "
        f"{experiment.min_days}, experiment.min_units {experiment.min_units})",
    )
    low, high = readout.relative_low, readout.relative_high
    superior = low > 0
    primary = Check(
        "online primary",
        low > -experiment.margin,
        low,
        -experiment.margin,
        f"{readout.primary_metric} per unit {readout.primary.relative:+.2%} "
        f"[{low:+.2%}, {high:+.2%}] (always-valid {1 - experiment.alpha:.0%}) "
        f"{'superior' if superior else 'vs'} non-inferiority margin -{experiment.margin:.1%}",
    )
    clearly_worse = high < -experiment.margin
    guardrails = _guardrail_checks(readout, promotion)
    checks = [healthy, enough, primary, *guardrails]
    out_of_time = readout.days >= experiment.max_days
    verdict: Verdict
    # Health and the always-valid primary may stop the experiment at any look; the
    # guardrails' intervals are fixed-horizon ones, read once the evidence is enough.
    guarded = all(check.passed for check in guardrails)
    if not healthy.passed or clearly_worse or (enough.passed and not guarded):
        verdict = "rejected"
    elif enough.passed and primary.passed:
        verdict = "promoted"
    elif out_of_time:
        verdict = "rejected"
    else:
        return OnlineVerdict("continue", checks, None)
    decision = PromotionDecision(
        "promoted" if verdict == "promoted" else "rejected",
        control_version,
        checks,
        # The treatment version loaded and answered in a fresh process when it was
        # registered, and has served the experiment since.
        SmokeResult(ok=True),
        {
            "challenger": readout.primary.treatment_mean,
            "champion": readout.primary.control_mean,
            "difference": readout.primary.difference,
            "low": readout.primary.low,
            "high": readout.primary.high,
            "relative_low": low,
            "evaluated_users": float(units),
        },
        {
            name: {
                "challenger": guard.treatment,
                "champion": guard.control,
                "difference": guard.difference,
                "low": guard.low,
                "high": guard.high,
            }
            for name, guard in readout.guardrails.items()
        },
    )
    return OnlineVerdict(verdict, checks, decision)


def _guardrail_checks(readout: Readout, promotion: PromotionConfig) -> list[Check]:
    if not promotion.exposure_guard:
        return []
    gini = readout.guardrails["gini_sellers"]
    new = readout.guardrails["new_listing_exposure"]
    return [
        Check(
            "online seller gini",
            gini.low <= promotion.max_seller_gini_increase,
            gini.difference,
            promotion.max_seller_gini_increase,
            f"seller-exposure Gini {gini.difference:+.4f} [{gini.low:+.4f}, {gini.high:+.4f}] "
            f"vs registry.promotion.max_seller_gini_increase {promotion.max_seller_gini_increase}",
        ),
        Check(
            "online new listing exposure",
            new.high >= -promotion.max_new_listing_exposure_drop,
            new.difference,
            -promotion.max_new_listing_exposure_drop,
            f"new-listing exposure {new.difference:+.4f} [{new.low:+.4f}, {new.high:+.4f}] vs "
            f"-registry.promotion.max_new_listing_exposure_drop "
            f"{promotion.max_new_listing_exposure_drop}",
        ),
    ]
