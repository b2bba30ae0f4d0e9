"""What the promotion gate decides: one `Check` per rule, and the `PromotionDecision` they
add up to (the offline gate's, an index refresh's or an online readout's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from components.registry.promotion_smoke import SmokeResult

#: `awaiting_experiment`: the offline checks passed under `registry.promotion.online`; the
#: version stays `challenger` until an online experiment's readout decides.
Decision = Literal["promoted", "rejected", "forced", "awaiting_experiment"]


@dataclass(frozen=True)
class Check:
    """One rule of the gate: whether it passed, the value held to the bound, and why."""

    name: str
    passed: bool
    value: float | str | None
    bound: float | str | None
    detail: str


@dataclass(frozen=True)
class PromotionDecision:
    """The verdict on a version, with every check and the figures it was decided on."""

    decision: Decision
    champion_version: int | None
    checks: list[Check]
    smoke: SmokeResult
    #: The compared metric: challenger and champion values, difference and its interval,
    #: evaluated users (empty without a comparable champion).
    figures: dict[str, float] = field(default_factory=dict)
    #: The exposure guard's figures per compared exposure metric (`gini_sellers@20`,
    #: `new_item_exposure@20`): challenger, champion, difference, low, high, and the
    #: `bound` the interval was held to (empty without a comparable champion).
    exposure: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def promote(self) -> bool:
        return self.decision in ("promoted", "forced")

    @property
    def reasons(self) -> list[str]:
        """Why the gate said no (empty when every check passed)."""
        return [check.detail for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "promoted": self.promote,
            "champion_version": self.champion_version,
            "reasons": self.reasons,
            "figures": self.figures,
            "exposure": self.exposure,
            "checks": [asdict(check) for check in self.checks],
            "smoke": asdict(self.smoke),
        }
