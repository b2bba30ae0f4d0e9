"""The online experiment's settings (`experiment`): design, readout, the simulated market
that stands for live traffic, exploration.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from components.config.base import Duration, StrictModel


class MarketSimulationConfig(StrictModel):
    """How the synthetic market answers served lists (components.data.market_simulation):
    the users' examination of a list and their clicks; past a click, the generator's own
    escalation to like, save, bag and purchase."""

    #: Days simulated after the generated period.
    days: int = Field(14, ge=1, le=120)
    #: Share of sessions that open on the recommendations (the rest browse organically).
    recommended_share: float = Field(0.5, ge=0, le=1)
    #: Listings asked for per recommendation session.
    k: int = Field(20, ge=1, le=100)
    #: `position_based`: slot r is examined with probability r ** -examination_decay,
    #: independently; `cascade`: slots are examined top-down, going on past each with
    #: probability `cascade_continue`, and a purchase ends the session's list.
    position_model: Literal["position_based", "cascade"] = "position_based"
    examination_decay: float = Field(0.7, gt=0)
    cascade_continue: float = Field(0.85, gt=0, le=1)
    #: Click (view) logit of an examined slot: intercept + slope x (affinity - the
    #: generator's affinity centre).
    click_intercept: float = Field(-1.2, ge=-10, le=5)
    click_slope: float = Field(0.7, ge=0)
    seed: int = 0


class ExplorationConfig(StrictModel):
    """Randomised serving for off-policy evaluation (components.experiments.exploration):
    each list a Plackett-Luce draw from the arm's top `top_m`, weight rank ** (-1 /
    temperature), logged with its propensities. 0: the deterministic list."""

    top_m: int = Field(50, ge=1, le=500)
    #: The default keeps the expected cost of exploring under the 2% budget on the
    #: synthetic market (docs/experiments.md, off-policy evaluation).
    temperature: float = Field(0.3, ge=0, le=10)


#: Outcomes a readout can take as the primary metric, per assigned unit.
OnlineMetric = Literal["purchases", "views", "saves", "revenue"]


class ExperimentConfig(StrictModel):
    """An online experiment of `challenger` against `champion` (components.experiments,
    flows.experiment): how units are split, what is read out, and when it may decide."""

    #: `ab`: each unit sees its arm's list; `interleave`: team-draft interleaving of both
    #: arms' lists, each slot credited to the arm that drafted it; `explore`: every unit
    #: sees champion's list with `exploration` (a logging period for off-policy evaluation).
    design: Literal["ab", "interleave", "explore"] = "ab"
    treatment_share: float = Field(0.5, gt=0, lt=1)
    #: Hash salt; null: the experiment's id (a new experiment reshuffles everyone).
    salt: str | None = Field(None, min_length=1)
    #: The decision's metric: attributed outcomes per assigned unit (`purchases`: sold
    #: listings per assigned user).
    primary_metric: OnlineMetric = "purchases"
    #: What a team is credited with under interleaving: its slots' attributed outcomes of
    #: this kind (clicks, i.e. views, by default: many more of them than purchases).
    interleaving_credit: OnlineMetric = "views"
    #: Non-inferiority margin, relative to control: the lower bound of (treatment -
    #: control) / control on the primary metric must lie above -margin.
    margin: float = Field(0.02, ge=0, le=1)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    #: The always-valid confidence sequence is tightest around this many units.
    sequential_tuning_units: int = Field(5_000, ge=10)
    #: Sample-ratio mismatch alarm (chi-square p-value below it: the readout refuses).
    srm_alpha: float = Field(0.001, gt=0, lt=1)
    #: CUPED on each unit's pre-period behaviour (its views, likes, saves, bags and
    #: purchases in the `pre_period` before the start).
    cuped: bool = True
    pre_period: Duration = "28D"
    min_days: int = Field(7, ge=1)
    max_days: int = Field(28, ge=1)
    min_units: int = Field(1_000, ge=1)
    #: Outcome -> the longest gap after an exposure for it to count as the exposure's.
    attribution_windows: dict[str, Duration] = Field(
        default_factory=lambda: {
            "view": "1h",
            "like": "1D",
            "save": "1D",
            "add_to_bag": "1D",
            "purchase": "7D",
        }
    )
    #: Where served slots are logged: a folder or pyarrow filesystem URI (a day-partitioned
    #: Parquet dataset) or a postgresql:// URL; null: REWEAR_HOME/exposures.
    exposure_log: str | None = None
    #: Unit bootstrap resamples of the exposure guardrails' intervals.
    bootstrap_resamples: int = Field(200, ge=20)
    simulation: MarketSimulationConfig = MarketSimulationConfig()
    #: Plackett-Luce exploration of the lists served in `ab` and `explore` experiments.
    exploration: ExplorationConfig = ExplorationConfig()

    @model_validator(mode="after")
    def _days_are_ordered(self) -> ExperimentConfig:
        if self.max_days < self.min_days:
            raise ValueError(
                f"experiment.max_days ({self.max_days}) is below experiment.min_days "
                f"({self.min_days}); raise max_days or lower min_days"
            )
        return self
