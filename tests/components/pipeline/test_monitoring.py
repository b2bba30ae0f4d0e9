"""PSI and the drift report: exact values on known distributions, thresholds in messages,
windows of equal length whatever the refresh, and "not enough data" instead of a verdict."""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import pandas as pd
import pytest

from components.config import EvaluationConfig
from components.data.schema import CanonicalTables
from components.pipeline.monitoring import (
    MonitoringConfig,
    champion_quality,
    drift_report,
    drift_windows,
    monitor_status,
    numeric_psi,
    psi,
    threshold_breaches,
)
from components.serving.recommender import BundleRecommender


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
    trained_until = pd.Timestamp("2026-01-08", tz="UTC")
    small = MonitoringConfig(window="7D", min_rows=100)
    quiet = drift_report(_tables(shift=False), trained_until, small)
    assert quiet["enough_data"] is True and quiet["not_enough_data"] == []
    assert all(0 <= value < 1e-3 for value in quiet["psi"].values()), quiet["psi"]
    # The newest 7 days end at the last row (Jan 14 23:00); the reference is the 7 days
    # before them, all before the cut-off: equal length, not one shared row.
    assert quiet["current_window"] == ["2026-01-07T23:00:00+00:00", "2026-01-14T23:00:00+00:00"]
    assert quiet["reference_window"] == ["2025-12-31T23:00:00+00:00", "2026-01-07T23:00:00+00:00"]
    assert (quiet["reference_rows"], quiet["current_rows"]) == (348, 352)  # day 6's 23:00 rows
    assert quiet["current_rows_after_training"] == 347  # Jan 8 00:00 itself was trained on
    shifted = drift_report(_tables(shift=True), trained_until, small)
    assert shifted["psi"]["event_mix"] > 1.0
    assert shifted["psi"]["category_mix"] < 1e-3
    breaches = threshold_breaches(
        shifted, {"evaluated_users": 0, "metrics": {}}, MonitoringConfig(), None
    )
    assert len(breaches) == 1 and breaches[0].startswith("event_mix drifted: PSI")


def _steady_market(days: int = 21, rows_per_day: int = 300, seed: int = 0) -> CanonicalTables:
    """Interactions at random moments with the same event, category and price mix each day."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    n = days * rows_per_day
    seconds = np.sort(rng.uniform(0, days * 86400, n))
    interactions = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 200, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 50, n)],
            "ts": start + pd.to_timedelta(seconds, unit="s"),
            "event": rng.choice(["view", "like", "purchase"], n, p=[0.8, 0.15, 0.05]),
            "weight": 1.0,
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(50)],
            "category": [["tops", "shoes", "bags", "coats"][i % 4] for i in range(50)],
            "price": rng.lognormal(3, 0.5, 50),
            "created_at": start,
            "sold_at": pd.NaT,
        }
    )
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(200)]})
    return CanonicalTables(interactions, items, users)


def test_windows_have_equal_length_and_never_overlap():
    tables = _steady_market()
    end = tables.interactions["ts"].max()
    for days_since_training in (0, 1, 3, 10):
        trained_until = end - pd.Timedelta(days=days_since_training)
        windows = drift_windows(tables.interactions, trained_until, "7D")
        assert windows.current_end == end
        assert windows.current_end - windows.current_start == pd.Timedelta("7D")
        assert windows.reference_end - windows.reference_start == pd.Timedelta("7D")
        assert windows.reference_end <= windows.current_start
        assert windows.reference_end <= trained_until
    # Trained 10 days ago: the reference is the week that ended at the training cut-off.
    assert windows.reference_end == end - pd.Timedelta("10D")


def test_after_a_refresh_the_monitor_compares_comparable_windows_and_stays_quiet():
    """The issue's case: the champion trained 2 days ago, a refresh moved the bundle's
    data_until to the newest row. The windows hang on the training cut-off, so the refresh
    changes nothing: two weeks of comparable size, PSI near 0, no breach."""
    tables = _steady_market()
    end = tables.interactions["ts"].max()
    trained_until = end - pd.Timedelta("2D")
    report = drift_report(tables, trained_until, MonitoringConfig())
    assert report["enough_data"] is True
    assert 0.9 < report["current_rows"] / report["reference_rows"] < 1.1
    assert 550 <= report["current_rows_after_training"] <= 650  # two days at 300 a day
    assert all(0 <= value < 0.05 for value in report["psi"].values()), report["psi"]
    quality = {"enough_data": True, "evaluated_users": 50, "metrics": {}}
    assert threshold_breaches(report, quality, MonitoringConfig(), None) == []
    assert monitor_status(report, quality, [])[0] == "ok"


def test_no_data_after_the_training_cut_off_is_not_enough_data_never_a_pass():
    tables = _steady_market()
    end = tables.interactions["ts"].max()
    report = drift_report(tables, end, MonitoringConfig())
    assert report["enough_data"] is False and report["psi"] == {}
    assert report["current_rows_after_training"] == 0
    (reason,) = report["not_enough_data"]
    cut_off = end.isoformat()
    assert reason.startswith(f"0 interactions after the champion's training cut-off {cut_off}")
    assert "(min_rows 500)" in reason
    quality = {"enough_data": True, "evaluated_users": 50, "metrics": {}}
    assert threshold_breaches(report, quality, MonitoringConfig(), None) == []
    status, summary = monitor_status(report, quality, [])
    assert status == "insufficient_data"
    assert summary == "not enough data: " + reason


def test_a_window_below_min_rows_or_min_users_names_its_count_the_minimum_and_the_span():
    tables = _steady_market(days=21, rows_per_day=50)
    end = tables.interactions["ts"].max()
    report = drift_report(tables, end - pd.Timedelta("3D"), MonitoringConfig(min_rows=400))
    assert report["enough_data"] is False and report["psi"] == {}
    current, reference = report["current_window"], report["reference_window"]
    assert report["not_enough_data"] == [
        f"the reference window [{reference[0]}, {reference[1]}) holds "
        f"{report['reference_rows']} interactions (min_rows 400)",
        f"the current window [{current[0]}, {current[1]}] holds "
        f"{report['current_rows']} interactions (min_rows 400)",
        f"{report['current_rows_after_training']} interactions after the champion's training "
        f"cut-off {(end - pd.Timedelta('3D')).isoformat()} (min_rows 400): the current "
        "window would mostly repeat the data the champion learned from",
    ]
    assert 300 < report["current_rows"] < 400
    few_users = drift_report(
        tables, end - pd.Timedelta("3D"), MonitoringConfig(min_rows=100, min_users=500)
    )
    assert few_users["not_enough_data"][0].endswith(
        f"holds {few_users['reference_users']} users (min_users 500)"
    )
    assert few_users["reference_users"] < 500


class _NeverAsked:
    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the bundle was asked for {name} with no data to score")


def test_quality_without_new_interactions_is_not_enough_data():
    tables = _steady_market()
    after = tables.interactions["ts"].max()  # the bundle saw this very moment
    # The empty window is decided before the bundle is asked anything.
    quality = champion_quality(
        cast(BundleRecommender, _NeverAsked()),
        tables,
        after,
        MonitoringConfig(),
        EvaluationConfig(),
    )
    assert quality["enough_data"] is False and quality["evaluated_users"] == 0
    assert quality["not_enough_data"] == [
        f"the quality window ({after.isoformat()}, {after.isoformat()}] after the served "
        "bundle's data holds 0 evaluated users (min_users 20)"
    ]
    drift = drift_report(tables, after - pd.Timedelta("3D"), MonitoringConfig())
    assert monitor_status(drift, quality, [])[0] == "insufficient_data"


def test_an_alert_outranks_missing_data_and_ok_needs_every_check():
    enough = {"enough_data": True, "not_enough_data": []}
    short = {"enough_data": False, "not_enough_data": ["the current window holds 3"]}
    assert monitor_status(short, enough, ["price drifted"]) == ("alert", "price drifted")
    assert monitor_status(enough, short, [])[0] == "insufficient_data"
    assert monitor_status(enough, enough, []) == ("ok", "every check had enough data and passed")


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
