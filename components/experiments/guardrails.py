"""The exposure guardrails of an experiment: seller-exposure Gini, new-listing and
small-seller shares of each arm's slots, with a unit bootstrap interval on their
difference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from components.config import ExperimentConfig
from components.evaluation.beyond_accuracy import gini
from components.experiments.schema import CONTROL, TREATMENT

#: A listing is new when served within this long of its creation; a seller is small with
#: at most this many listings in the catalogue (the offline evaluation's defaults).
NEW_LISTING_AGE = pd.Timedelta(days=7)
SMALL_SELLER_MAX_LISTINGS = 3
GUARDRAILS = ("gini_sellers", "new_listing_exposure", "small_seller_exposure")


@dataclass(frozen=True)
class Guardrail:
    """An exposure figure per arm, treatment - control, and its unit-bootstrap interval."""

    control: float
    treatment: float
    difference: float
    low: float
    high: float


def exposure_guardrails(
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
        statistics[name] = _bootstrapped_arm_statistics(
            exposures["unit_id"].to_numpy()[rows],
            seller[rows],
            new[rows],
            small[rows],
            len(listings),
            config.bootstrap_resamples,
            rng,
        )
    return {
        name: _pivotal_interval(statistics[CONTROL][name], statistics[TREATMENT][name], config)
        for name in GUARDRAILS
    }


def _bootstrapped_arm_statistics(
    unit_ids: np.ndarray,
    seller: np.ndarray,
    new: np.ndarray,
    small: np.ndarray,
    n_sellers: int,
    resamples: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Each guardrail statistic of one arm's slots: on the slots as served (entry 0), then
    on each Poisson resample of its units."""
    unit_codes, unit = np.unique(unit_ids, return_inverse=True)
    known = seller >= 0
    counts = sp.csr_matrix(
        (np.ones(int(known.sum())), (unit[known], seller[known])),
        shape=(len(unit_codes), n_sellers),
    )
    flags = sp.csr_matrix(
        np.column_stack(
            [
                np.bincount(unit, minlength=len(unit_codes)),
                np.bincount(unit, weights=new, minlength=len(unit_codes)),
                np.bincount(unit, weights=small, minlength=len(unit_codes)),
            ]
        )
    )
    weights = np.vstack(
        [
            np.ones(len(unit_codes)),
            rng.poisson(1.0, (resamples, len(unit_codes))),
        ]
    )
    per_seller = np.asarray((sp.csr_matrix(weights) @ counts).todense())
    totals = np.asarray((sp.csr_matrix(weights) @ flags).todense())
    return {
        "gini_sellers": np.array([gini(row) for row in per_seller]),
        "new_listing_exposure": totals[:, 1] / np.maximum(totals[:, 0], 1.0),
        "small_seller_exposure": totals[:, 2] / np.maximum(totals[:, 0], 1.0),
    }


def _pivotal_interval(
    control: np.ndarray, treatment: np.ndarray, config: ExperimentConfig
) -> Guardrail:
    """Treatment - control of one statistic (entry 0 the point, the rest its resamples)."""
    point = float(treatment[0] - control[0])
    resampled = treatment[1:] - control[1:]
    # Basic (pivotal) bootstrap interval: valid for list-level statistics whose
    # bootstrap distribution is shifted from the point (a Gini is).
    low, high = np.quantile(resampled, [1 - config.alpha / 2, config.alpha / 2])
    return Guardrail(
        control=float(control[0]),
        treatment=float(treatment[0]),
        difference=point,
        low=float(2 * point - low),
        high=float(2 * point - high),
    )
