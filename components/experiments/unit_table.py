"""The unit table of an experiment: one row per unit the log saw, with its variant, its
attributed outcomes and its pre-period covariates (CUPED's design matrix is built from
them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import ExperimentConfig
from components.experiments.schema import CONTROL, TREATMENT

#: Outcomes read per unit: the events counted (distinct listings), revenue from prices.
OUTCOME_EVENTS = {"purchases": "purchase", "views": "view", "saves": "save"}
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
