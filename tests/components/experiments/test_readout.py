"""The readout and the online verdict on hand-built logs: health checks, the primary metric
per assigned unit, CUPED, guardrails, and when the verdict moves champion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import ExperimentConfig, PromotionConfig
from components.experiments.assignment import assign_variants
from components.experiments.readout import read_out
from components.experiments.schema import CONTROL, TREATMENT
from components.registry.online_promotion import decide_online

START = pd.Timestamp("2026-03-01", tz="UTC")
CONFIG = ExperimentConfig(min_days=3, min_units=100, bootstrap_resamples=50)
SLOTS = 3


def market(
    n_units: int = 2_000,
    buy_rate: dict[str, float] | None = None,
    seed: int = 0,
    days: int = 4,
) -> dict[str, pd.DataFrame]:
    """Each unit served one 3-slot list a day; it buys its first slot's listing with its
    arm's rate, times its activity, which its pre-period views reveal."""
    rates = buy_rate or {CONTROL: 0.1, TREATMENT: 0.1}
    rng = np.random.default_rng(seed)
    units = np.array([f"u{n}" for n in range(n_units)], dtype=object)
    variants = assign_variants(units, "salt")
    activity = rng.gamma(2.0, 0.5, n_units)
    items = pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(n_units * days * SLOTS)],
            "seller_id": [f"s{n % 50}" for n in range(n_units * days * SLOTS)],
            "price": 10.0,
            "created_at": START - pd.Timedelta(days=30),
            "sold_at": pd.Series(
                pd.NaT, index=range(n_units * days * SLOTS), dtype="datetime64[us, UTC]"
            ),
        }
    )
    exposures, outcomes, pre = [], [], []
    for day in range(days):
        at = START + pd.Timedelta(days=day, hours=1)
        item = np.arange(n_units) * days * SLOTS + day * SLOTS
        for slot in range(SLOTS):
            exposures.append(
                pd.DataFrame(
                    {
                        "request_id": [f"r{day}-{n}" for n in range(n_units)],
                        "served_at": at,
                        "experiment_id": "exp",
                        "unit_id": units,
                        "unit_kind": "user",
                        "variant": variants,
                        "position": slot + 1,
                        "item_id": [f"i{i + slot}" for i in item],
                        "score": 1.0,
                        "source": "ranker",
                        "team": None,
                        "model_name": "rewear",
                        "model_version": np.where(variants == TREATMENT, "2", "1"),
                        "policy": "deterministic",
                        "propensity": 1.0,
                    }
                )
            )
        p = np.minimum(
            np.where(variants == TREATMENT, rates[TREATMENT], rates[CONTROL]) * activity, 1
        )
        buys = rng.random(n_units) < p
        outcomes.append(
            pd.DataFrame(
                {
                    "user_id": units[buys],
                    "item_id": [f"i{i}" for i in item[buys]],
                    "ts": at + pd.Timedelta(minutes=5),
                    "event": "purchase",
                    "weight": 1.0,
                }
            )
        )
    views = rng.poisson(activity * 20)
    pre.append(
        pd.DataFrame(
            {
                "user_id": np.repeat(units, views),
                "item_id": "i0",
                "ts": START - pd.Timedelta(days=10),
                "event": "view",
                "weight": 1.0,
            }
        )
    )
    exposure = pd.concat(exposures, ignore_index=True)
    exposure["served_at"] = exposure["served_at"].astype("datetime64[us, UTC]")
    exposure["position"] = exposure["position"].astype(np.int32)
    return {
        "exposures": exposure,
        "interactions": pd.concat(outcomes, ignore_index=True),
        "pre": pd.concat(pre, ignore_index=True),
        "items": items,
    }


def readout(data: dict[str, pd.DataFrame], days: float = 4.0, share: float = 0.5):
    return read_out(
        data["exposures"],
        data["interactions"],
        data["pre"],
        data["items"],
        CONFIG,
        START,
        START + pd.Timedelta(days=days),
        share,
        "ab",
    )


def test_a_clear_lift_is_read_per_assigned_unit_and_promoted() -> None:
    data = market(buy_rate={CONTROL: 0.1, TREATMENT: 0.2})
    result = readout(data)
    assert result.health.passed and result.health.log_completeness == 1.0
    assert sum(result.units.values()) == 2_000 and result.requests == 8_000
    variants = data["exposures"].groupby("unit_id")["variant"].first()
    bought = data["interactions"].groupby("user_id").size()
    for arm in (CONTROL, TREATMENT):
        members = variants.index[variants == arm]
        mean = bought.reindex(members, fill_value=0).mean()
        assert result.metrics["purchases"]["raw"].__getattribute__(f"{arm}_mean") == pytest.approx(
            mean
        )
    assert result.primary.relative == pytest.approx(1.0, abs=0.2)
    assert result.relative_low > 0
    # CUPED: the pre-period views reveal activity, the variance falls, the A/A rate does not
    # move (checked in bench/online.py); the adjusted interval is narrower.
    assert result.cuped_variance_reduction["purchases"] > 0.2
    raw, adjusted = result.metrics["purchases"]["raw"], result.metrics["purchases"]["cuped"]
    assert adjusted.standard_error < raw.standard_error
    assert len(result.daily) == 4 and result.daily[-1]["units"] == 2_000
    for guard in result.guardrails.values():
        assert guard.low <= guard.difference <= guard.high
    verdict = decide_online(result, CONFIG, PromotionConfig(), control_version=1)
    assert verdict.verdict == "promoted", verdict.reasons
    assert verdict.decision is not None and verdict.decision.promote


def test_a_clearly_worse_challenger_is_rejected_and_too_early_continues() -> None:
    worse = readout(market(buy_rate={CONTROL: 0.2, TREATMENT: 0.1}))
    assert worse.relative_high < -CONFIG.margin
    assert decide_online(worse, CONFIG, PromotionConfig(), 1).verdict == "rejected"
    equal = readout(market(), days=2.0)
    verdict = decide_online(equal, CONFIG, PromotionConfig(), 1)
    assert verdict.verdict == "continue" and verdict.decision is None
    assert any("experiment.min_days" in reason for reason in verdict.reasons)


def test_health_failures_reject_whatever_the_effect() -> None:
    data = market(buy_rate={CONTROL: 0.1, TREATMENT: 0.3})
    exposures = data["exposures"]
    # Sample-ratio mismatch: a third of treatment's units lost.
    treated = exposures.loc[exposures["variant"] == TREATMENT, "unit_id"].unique()
    lost = exposures[exposures["unit_id"].isin(treated[: len(treated) // 3])].index
    skewed = readout({**data, "exposures": exposures.drop(lost)})
    assert skewed.health.srm_alarm and not skewed.health.passed
    verdict = decide_online(skewed, CONFIG, PromotionConfig(), 1)
    assert verdict.verdict == "rejected"
    assert any("sample-ratio mismatch" in reason for reason in verdict.reasons)
    # A gap in a request's positions, a unit in both arms, a sold listing served.
    broken = exposures.drop(exposures[(exposures["position"] == 2)].index[:5]).copy()
    first = broken["unit_id"] == "u0"
    broken.loc[first & (broken["request_id"].str.startswith("r1")), "variant"] = (
        CONTROL if broken.loc[first, "variant"].iloc[0] == TREATMENT else TREATMENT
    )
    items = data["items"].copy()
    items.loc[0, "sold_at"] = START - pd.Timedelta(days=1)
    health = readout({**data, "exposures": broken, "items": items}).health
    assert health.log_completeness < 1.0
    assert health.units_in_both_arms == 1
    assert health.sold_listings_served >= 1
    assert not health.passed


def test_no_exposure_says_what_to_check() -> None:
    data = market(n_units=50, days=1)
    with pytest.raises(ValueError, match="no exposures logged"):
        read_out(
            data["exposures"].iloc[0:0],
            data["interactions"],
            data["pre"],
            data["items"],
            CONFIG,
            START,
            START + pd.Timedelta(days=1),
            0.5,
            "ab",
        )
