"""PSI and the drift report: exact values on known distributions, thresholds in messages."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from components.data.schema import CanonicalTables
from components.monitoring import (
    MonitoringConfig,
    drift_report,
    numeric_psi,
    psi,
    threshold_breaches,
)


def test_psi_is_zero_for_equal_mixes_and_matches_the_formula():
    a = pd.Series(["view"] * 80 + ["purchase"] * 20)
    assert psi(a, a.sample(frac=1, random_state=0)) == pytest.approx(0.0, abs=1e-12)
    b = pd.Series(["view"] * 50 + ["purchase"] * 50)
    expected = (0.5 - 0.8) * math.log(0.5 / 0.8) + (0.5 - 0.2) * math.log(0.5 / 0.2)
    assert psi(a, b) == pytest.approx(expected, rel=1e-3)
    assert psi(a, b) == pytest.approx(psi(b, a), rel=1e-9)  # symmetric


def test_psi_of_a_new_category_is_large_but_finite():
    value = psi(pd.Series(["tops"] * 100), pd.Series(["tops"] * 50 + ["luxury"] * 50))
    assert 2.0 < value < 10.0


def test_numeric_psi_uses_reference_deciles_and_sees_a_price_shift():
    rng = np.random.default_rng(0)
    reference = pd.Series(rng.lognormal(3, 0.5, 5000))
    assert numeric_psi(reference, pd.Series(rng.lognormal(3, 0.5, 5000))) < 0.02
    assert numeric_psi(reference, reference * 3) > 1.0
    assert numeric_psi(reference, pd.Series([], dtype=float)) == 0.0


def _tables(shift: bool) -> CanonicalTables:
    start = pd.Timestamp("2026-01-01", tz="UTC")
    rows = []
    for day in range(14):
        for n in range(50):
            item = f"i{n % 10}"
            event = "purchase" if (shift and day >= 7 and n % 2) else ("view" if n % 5 else "like")
            rows.append((f"u{n}", item, start + pd.Timedelta(days=day, hours=n % 24), event))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "ts", "event"])
    interactions["weight"] = 1.0
    items = pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(10)],
            "category": ["tops", "shoes"] * 5,
            "price": np.arange(10.0, 20.0),
            "created_at": start,
            "sold_at": pd.NaT,
        }
    )
    users = pd.DataFrame({"user_id": [f"u{n}" for n in range(50)]})
    return CanonicalTables(interactions, items, users)


def test_drift_report_compares_the_window_before_the_champion_with_the_newest():
    since = pd.Timestamp("2026-01-08", tz="UTC")
    quiet = drift_report(_tables(shift=False), since, MonitoringConfig(window="7D"))
    assert quiet["psi"] == {"event_mix": 0.0, "category_mix": 0.0, "price": 0.0}
    assert quiet["reference_rows"] == quiet["current_rows"] == 350
    shifted = drift_report(_tables(shift=True), since, MonitoringConfig(window="7D"))
    assert shifted["psi"]["event_mix"] > 1.0
    assert shifted["psi"]["category_mix"] == 0.0
    breaches = threshold_breaches(
        shifted, {"evaluated_users": 0, "metrics": {}}, MonitoringConfig(), None
    )
    assert len(breaches) == 1 and breaches[0].startswith("event_mix drifted: PSI")


def test_quality_breaches_name_the_metric_the_value_and_the_limit():
    drift = {"psi": {"event_mix": 0.01}}
    quality = {"evaluated_users": 100, "metrics": {"recall@20": 0.04}, "candidate_recall": 0.1}
    config = MonitoringConfig(max_recall_drop=0.5, min_candidate_recall=0.2)
    breaches = threshold_breaches(drift, quality, config, registered_recall=0.1)
    assert breaches == [
        "recall@20 fell to 0.0400 on the new data, below 0.0500 (registered 0.1000, "
        "max_recall_drop 0.5)",
        "candidate recall@100 is 0.1000, below min_candidate_recall 0.2",
    ]
    few_users = {**quality, "evaluated_users": 5}
    assert threshold_breaches(drift, few_users, config, registered_recall=0.1) == []
