"""Monitoring the champion: data drift (PSI) and quality on the data it has not seen.

Drift compares the newest `window` of interactions with the `window` that ended when the
champion's data did, on three inputs the model leans on: the event mix, the category mix
of the listings people interact with, and those listings' prices (deciles of the
reference). PSI = sum_b (p_cur - p_ref) * ln(p_cur / p_ref) over bins; the usual reading is
< 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift.

Quality scores the served bundle itself on the interactions after its data ends (full
ranking over listings available then, as in evaluation) and measures the candidate
recall@N of the served path (the index and filters included), then compares with the
figures registered on the version.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field

from components.config import EvaluationConfig, StrictModel
from components.data.schema import CanonicalTables
from components.data.split import DataSplit, latest_moment
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer
from components.registry.bundle import BundleRecommender

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
    #: Fewer evaluated users than this: quality is reported but never alerts.
    min_users: int = Field(20, ge=1)


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


def monitoring_windows(
    tables: CanonicalTables, since: pd.Timestamp, window: str
) -> tuple[pd.Timestamp, pd.Timestamp, pd.Timestamp]:
    """(reference start, champion's data end, current start): the reference window ends
    where the champion's data did; the current one is the newest `window` of data."""
    now = latest_moment(tables.interactions, tables.items)
    if now is None:
        raise ValueError("monitoring needs timestamped interactions; this source has none")
    length = pd.Timedelta(window)
    return since - length, since, max(since, now - length)


def drift_report(
    tables: CanonicalTables, since: pd.Timestamp, config: MonitoringConfig
) -> dict[str, object]:
    """PSI per feature between the reference window and the current one, with sizes."""
    ref_start, ref_end, current_start = monitoring_windows(tables, since, config.window)
    interactions = tables.interactions
    ts = interactions["ts"]
    reference = interactions[(ts >= ref_start) & (ts < ref_end)]
    current = interactions[ts >= current_start]
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
    return {
        "psi": {name: round(value, 6) for name, value in values.items()},
        "reference_window": [ref_start.isoformat(), ref_end.isoformat()],
        "current_window": [current_start.isoformat(), str(ts.max().isoformat())],
        "reference_rows": len(reference),
        "current_rows": len(current),
    }


def champion_quality(
    recommender: BundleRecommender,
    tables: CanonicalTables,
    since: pd.Timestamp,
    config: MonitoringConfig,
    evaluation: EvaluationConfig,
) -> dict[str, object]:
    """Recall / NDCG of the served bundle on the interactions at or after `since` (its data
    end), and the served path's candidate recall@N on a seeded sample of those users."""
    interactions = tables.interactions
    history = interactions[interactions["ts"] < since].reset_index(drop=True)
    window = interactions[interactions["ts"] >= since].reset_index(drop=True)
    if evaluation.positive_events is not None:
        window = window[window["event"].isin(evaluation.positive_events)]
    if window.empty:
        return {"evaluated_users": 0, "metrics": {}, "candidate_recall": None}
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
        "evaluated_users": task.n_users,
        "metrics": {
            key: round(value, 6)
            for key, value in result.metrics.items()
            if key.split("@")[0] in ("recall", "ndcg")
        },
        "candidate_recall": round(served_recall(recommender, window, config), 6),
    }


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
    for name, value in drift["psi"].items():  # type: ignore[union-attr]
        if value > config.max_psi:
            breaches.append(f"{name} drifted: PSI {value:.3f} > max_psi {config.max_psi}")
    if int(quality["evaluated_users"]) < config.min_users:  # type: ignore[call-overload]
        return breaches
    key = f"recall@{config.recall_k}"
    recall = quality["metrics"].get(key)  # type: ignore[union-attr]
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
