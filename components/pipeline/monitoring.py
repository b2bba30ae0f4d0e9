"""Monitoring the champion: data drift (PSI) and quality on the data it has not seen.

Drift compares two windows of `window` length each, on three inputs the model leans on:
the event mix, the category mix of the listings people interact with, and those listings'
prices (deciles of the reference). PSI = sum_b (p_cur - p_ref) * ln(p_cur / p_ref) over
bins; the usual reading is < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift.

The windows are anchored on the data, not on the monitor's or the refresh's schedule: the
current window is the newest `window` of interactions, the reference the `window` of the
champion's training data that ends at its training cut-off, moved back to end where the
current window starts when the two would overlap (shared rows pull PSI towards 0: two
identical windows give exactly 0). An index refresh moves the bundle's `data_until` but
not its training cut-off, so it changes neither window.

A check without enough data says so ("not enough data": the count, the minimum, the
window) instead of passing or alerting: drift needs `min_rows` interactions and
`min_users` users in each window and `min_rows` interactions after the training cut-off
(else it would compare the champion's own training data with itself); quality needs
`min_users` evaluated users.

Quality scores the served bundle itself on the interactions after its data ends (full
ranking over listings available then, as in evaluation) and measures the candidate
recall@N of the served path (the index and filters included), then compares with the
figures registered on the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from components.config import EvaluationConfig, StrictModel
from components.data.schema import CanonicalTables
from components.data.split import DataSplit
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer
from components.serving.recommender import BundleRecommender

#: Probability floor in PSI so an empty bin does not give an infinite value.
PSI_EPSILON = 1e-4
DRIFT_FEATURES = ("event_mix", "category_mix", "price")


class MonitoringConfig(StrictModel):
    """Thresholds of the `monitor` flow (flow parameter `thresholds` overrides them)."""

    #: Length of the compared windows (pandas offset, e.g. "7D").
    window: str = "7D"
    #: A feature with PSI above this is a drift alert.
    max_psi: float = Field(0.25, gt=0)
    price_bins: int = Field(10, ge=2)
    #: Recall@K on the new window may fall at most this share below the registered one.
    recall_k: int = Field(20, ge=1)
    max_recall_drop: float = Field(0.5, ge=0, le=1)
    #: Served-path candidate recall@N (None: not checked).
    candidate_n: int = Field(100, ge=1)
    min_candidate_recall: float | None = Field(None, ge=0, le=1)
    #: Users whose candidate recall is measured (sampled, seeded): the served path is per user.
    candidate_users: int = Field(300, ge=1)
    #: Fewer users than this in a drift window, or evaluated users for quality: that
    #: check reports "not enough data" (neither a pass nor an alert).
    min_users: int = Field(20, ge=1)
    #: Fewer interactions than this in a drift window, or after the champion's training
    #: cut-off: drift reports "not enough data".
    min_rows: int = Field(500, ge=1)


class MonitoringAlertError(RuntimeError):
    """A monitored figure crossed its threshold; the message lists each with its value."""


def psi(reference: pd.Series, current: pd.Series) -> float:
    """Population stability index between two categorical samples (labels as values)."""
    labels = sorted(set(reference.dropna().astype(str)) | set(current.dropna().astype(str)))
    if not labels or reference.dropna().empty or current.dropna().empty:
        return 0.0
    ref = _shares(reference.dropna().astype(str), labels)
    cur = _shares(current.dropna().astype(str), labels)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def numeric_psi(reference: pd.Series, current: pd.Series, bins: int = 10) -> float:
    """PSI of a numeric feature over the reference's quantile bins (open-ended ends)."""
    ref = pd.to_numeric(reference, errors="coerce").dropna().to_numpy(float)
    cur = pd.to_numeric(current, errors="coerce").dropna().to_numpy(float)
    if len(ref) == 0 or len(cur) == 0:
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_bins = pd.Series(np.searchsorted(edges, ref, side="right"))
    cur_bins = pd.Series(np.searchsorted(edges, cur, side="right"))
    return psi(ref_bins, cur_bins)


def _shares(values: pd.Series, labels: list[str]) -> np.ndarray:
    counts = values.value_counts().reindex(labels, fill_value=0).to_numpy(float)
    shares = counts / max(counts.sum(), 1.0)
    shares = np.maximum(shares, PSI_EPSILON)
    return shares / shares.sum()


@dataclass(frozen=True)
class DriftWindows:
    """The compared windows: reference `[reference_start, reference_end)`, current
    `[current_start, current_end]`; `trained_until` is the champion's training cut-off."""

    reference_start: pd.Timestamp
    reference_end: pd.Timestamp
    current_start: pd.Timestamp
    current_end: pd.Timestamp
    trained_until: pd.Timestamp


def drift_windows(
    interactions: pd.DataFrame, trained_until: pd.Timestamp, window: str
) -> DriftWindows:
    """The newest `window` of interactions, and the `window` of training data that ends at
    the champion's training cut-off or, when that would overlap, where the current starts.

    Both have the same length whatever the refresh or monitor schedule; they never share a
    row (a row seen in both pulls PSI towards 0)."""
    if interactions.empty or interactions["ts"].isna().all():
        raise ValueError("monitoring needs timestamped interactions; this source has none")
    length = pd.Timedelta(window)
    end = pd.Timestamp(interactions["ts"].max())
    current_start = end - length
    reference_end = min(pd.Timestamp(trained_until), current_start)
    return DriftWindows(
        reference_start=reference_end - length,
        reference_end=reference_end,
        current_start=current_start,
        current_end=end,
        trained_until=pd.Timestamp(trained_until),
    )


def drift_report(
    tables: CanonicalTables, trained_until: pd.Timestamp, config: MonitoringConfig
) -> dict[str, object]:
    """PSI per feature between the reference window and the current one, with their sizes;
    with too little data in either, `enough_data` is False, `psi` empty and `not_enough_data`
    says which window, its count and the minimum."""
    interactions = tables.interactions
    windows = drift_windows(interactions, trained_until, config.window)
    ts = interactions["ts"]
    reference = interactions[(ts >= windows.reference_start) & (ts < windows.reference_end)]
    current = interactions[(ts >= windows.current_start) & (ts <= windows.current_end)]
    new_rows = int((current["ts"] > windows.trained_until).sum())
    reference_start, reference_end = windows.reference_start, windows.reference_end
    current_start, current_end = windows.current_start, windows.current_end
    reference_span = f"[{reference_start.isoformat()}, {reference_end.isoformat()})"
    current_span = f"[{current_start.isoformat()}, {current_end.isoformat()}]"
    shortfalls = _shortfalls(
        (
            (f"the reference window {reference_span}", reference),
            (f"the current window {current_span}", current),
        ),
        config,
    )
    if new_rows < config.min_rows:
        shortfalls.append(
            f"{new_rows} interactions after the champion's training cut-off "
            f"{windows.trained_until.isoformat()} (min_rows {config.min_rows}): the current "
            "window would mostly repeat the data the champion learned from"
        )
    report: dict[str, object] = {
        "enough_data": not shortfalls,
        "not_enough_data": shortfalls,
        "psi": {},
        "trained_until": windows.trained_until.isoformat(),
        "reference_window": [moment.isoformat() for moment in (reference_start, reference_end)],
        "current_window": [moment.isoformat() for moment in (current_start, current_end)],
        "reference_rows": len(reference),
        "current_rows": len(current),
        "current_rows_after_training": new_rows,
        "reference_users": int(reference["user_id"].nunique()),
        "current_users": int(current["user_id"].nunique()),
    }
    if shortfalls:
        return report
    items = tables.items.set_index("item_id")
    values = {
        "event_mix": psi(reference["event"], current["event"]),
        "category_mix": psi(
            reference["item_id"].map(items["category"]), current["item_id"].map(items["category"])
        ),
        "price": numeric_psi(
            reference["item_id"].map(items["price"]),
            current["item_id"].map(items["price"]),
            config.price_bins,
        ),
    }
    report["psi"] = {name: round(value, 6) for name, value in values.items()}
    return report


def _shortfalls(
    windows: tuple[tuple[str, pd.DataFrame], ...], config: MonitoringConfig
) -> list[str]:
    """One sentence per window below `min_rows` interactions or `min_users` users."""
    found = []
    for name, frame in windows:
        users = int(frame["user_id"].nunique())
        if len(frame) < config.min_rows:
            found.append(f"{name} holds {len(frame)} interactions (min_rows {config.min_rows})")
        elif users < config.min_users:
            found.append(f"{name} holds {users} users (min_users {config.min_users})")
    return found


def champion_quality(
    recommender: BundleRecommender,
    tables: CanonicalTables,
    since: pd.Timestamp,
    config: MonitoringConfig,
    evaluation: EvaluationConfig,
) -> dict[str, object]:
    """Recall / NDCG of the served bundle on the interactions after `since` (its data end:
    the bundle's histories and masks hold everything up to it, that moment included), and
    the served path's candidate recall@N on a seeded sample of those users. Fewer than
    `min_users` evaluated users: `enough_data` False and `not_enough_data` says so."""
    interactions = tables.interactions
    history = interactions[interactions["ts"] <= since].reset_index(drop=True)
    window = interactions[interactions["ts"] > since].reset_index(drop=True)
    if evaluation.positive_events is not None:
        window = window[window["event"].isin(evaluation.positive_events)]
    end = interactions["ts"].max() if len(interactions) else since
    span = [since.isoformat(), max(since, end).isoformat()]
    if window.empty:
        return {
            **_quality_sufficiency(0, span, config),
            "evaluated_users": 0,
            "metrics": {},
            "candidate_recall": None,
        }
    split = DataSplit(
        protocol="temporal",
        tables=tables,
        train=history,
        valid=history.iloc[:0],
        test=window,
        valid_cutoff=since,
        test_cutoff=since,
    )
    task = build_evaluation_task(split, "test", evaluation)
    ks = (config.recall_k, config.candidate_n)
    result = evaluate_scorer(recommender, task, ks)
    return {
        **_quality_sufficiency(task.n_users, span, config),
        "evaluated_users": task.n_users,
        "metrics": {
            key: round(value, 6)
            for key, value in result.metrics.items()
            if key.split("@")[0] in ("recall", "ndcg")
        },
        "candidate_recall": round(served_recall(recommender, window, config), 6),
    }


def _quality_sufficiency(
    users: int, span: list[str], config: MonitoringConfig
) -> dict[str, object]:
    shortfalls = []
    if users < config.min_users:
        shortfalls.append(
            f"the quality window ({span[0]}, {span[1]}] after the served bundle's data holds "
            f"{users} evaluated users (min_users {config.min_users})"
        )
    return {"enough_data": not shortfalls, "not_enough_data": shortfalls, "window": span}


def served_recall(
    recommender: BundleRecommender, window: pd.DataFrame, config: MonitoringConfig
) -> float:
    """Mean over sampled users of |served top-N ∩ their window items| / |window items|."""
    users = np.sort(window["user_id"].astype(str).unique())
    if len(users) > config.candidate_users:
        users = np.sort(np.random.default_rng(0).choice(users, config.candidate_users, False))
    answers = recommender.recommend(list(users), k=config.candidate_n)
    served = _item_sets(answers)
    wanted = _item_sets(window)
    recalls = [len(served.get(user, set()) & wanted[user]) / len(wanted[user]) for user in users]
    return float(np.mean(recalls))


def _item_sets(frame: pd.DataFrame) -> dict[str, set[str]]:
    sets: dict[str, set[str]] = {}
    for user, item in zip(frame["user_id"].astype(str), frame["item_id"].astype(str), strict=True):
        sets.setdefault(user, set()).add(item)
    return sets


def threshold_breaches(
    drift: dict[str, object],
    quality: dict[str, object],
    config: MonitoringConfig,
    registered_recall: float | None,
) -> list[str]:
    """One sentence per crossed threshold, naming the figure, its value and the limit."""
    breaches = []
    for name, value in drift["psi"].items():
        if value > config.max_psi:
            breaches.append(f"{name} drifted: PSI {value:.3f} > max_psi {config.max_psi}")
    if int(quality["evaluated_users"]) < config.min_users:
        return breaches
    key = f"recall@{config.recall_k}"
    recall = quality["metrics"].get(key)
    if recall is not None and registered_recall:
        floor = registered_recall * (1 - config.max_recall_drop)
        if recall < floor:
            breaches.append(
                f"{key} fell to {recall:.4f} on the new data, below {floor:.4f} "
                f"(registered {registered_recall:.4f}, max_recall_drop {config.max_recall_drop})"
            )
    candidate = quality.get("candidate_recall")
    minimum = config.min_candidate_recall
    if minimum is not None and candidate is not None and candidate < minimum:
        breaches.append(
            f"candidate recall@{config.candidate_n} is {candidate:.4f}, below "
            f"min_candidate_recall {minimum}"
        )
    return breaches


MonitorStatus = Literal["ok", "alert", "insufficient_data"]


def monitor_status(
    drift: dict[str, object], quality: dict[str, object], breaches: list[str]
) -> tuple[MonitorStatus, str]:
    """The run's status and a one-line summary: "alert" on any breach; else
    "insufficient_data" when a check lacked data (it neither passed nor alerted); "ok"
    only when every check had enough data and passed."""
    if breaches:
        return "alert", "; ".join(breaches)
    missing = [*_not_enough(drift), *_not_enough(quality)]
    if missing:
        return "insufficient_data", "not enough data: " + "; ".join(missing)
    return "ok", "every check had enough data and passed"


def _not_enough(report: dict[str, object]) -> list[str]:
    found = report.get("not_enough_data")
    return [str(message) for message in found] if isinstance(found, list) else []
