"""Off-policy evaluation of registered versions from explored exposure logs: what a
version would have sold per session on the sessions the logging policy served, before it
receives any traffic.

The log gives, per request and slot, the served item, its propensities and its rank in
the logging arm's own list; the marketplace's interactions give the reward (listings the
session sold, attributed to the slot within the purchase window). Each target version is
replayed on the same requests: its own list for the unit at the moment served, minus the
listings already sold then, compared slot by slot with what was served
(components.experiments.off_policy does the estimating).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import ExperimentConfig, PipelineConfig
from components.data.sources import load_source
from components.experiments.attribution import attribute_outcomes
from components.experiments.exploration import PLACKETT_LUCE
from components.experiments.exposure_log import open_exposure_sink
from components.experiments.off_policy import (
    ESTIMATORS,
    NoSupportError,
    OffPolicyResult,
    SlateLog,
    TargetSlates,
    estimate,
)
from components.serving.list_cache import CachedLists
from components.serving.recommender import BundleRecommender
from components.settings import RewearSettings

logger = logging.getLogger(__name__)

#: The outcome off-policy estimates count: listings sold from the list, per session.
REWARD_EVENT = "purchase"


@dataclass(frozen=True)
class LoggedRequests:
    """An explored log as requests x slots, with what a replay needs."""

    slates: SlateLog
    unit_ids: np.ndarray
    served_us: np.ndarray
    #: The served item of each slot (None where the request had fewer slots).
    items: np.ndarray
    #: The registered version that served each request (the logging arm).
    versions: np.ndarray
    top_m: int


def explored_rows(exposures: pd.DataFrame) -> pd.DataFrame:
    """The rows of `exposures` served with exploration. Refuses (NoSupportError) a log with
    none, naming the policies it holds, and one written before the propensity columns."""
    explored = exposures[exposures["policy"] == PLACKETT_LUCE]
    if explored.empty:
        held = sorted(exposures["policy"].unique().tolist()) if len(exposures) else []
        raise NoSupportError(
            f"no explored lists in the exposure log (policies logged: {held or 'none'}): "
            "off-policy estimates need lists served with exploration; run an experiment "
            "with experiment.exploration.temperature > 0 (the explore design serves "
            "champion that way), then estimate from those days"
        )
    needed = ["prefix_propensity", "inclusion_propensity", "candidate_rank"]
    if explored[needed].isna().any().any():
        raise NoSupportError(
            f"explored exposure rows lack {' or '.join(needed)}: the log was written by an "
            "older rewear; estimate from days logged since the upgrade"
        )
    return explored


def logged_requests(
    exposures: pd.DataFrame,
    interactions: pd.DataFrame,
    config: ExperimentConfig,
    top_m: int | None = None,
) -> LoggedRequests:
    """The explored requests of `exposures` with their attributed sales per slot (refused
    as `explored_rows` refuses)."""
    explored = explored_rows(exposures)
    windows = {REWARD_EVENT: pd.Timedelta(config.attribution_windows[REWARD_EVENT])}
    attributed = attribute_outcomes(explored, interactions, windows)
    sales = attributed.groupby(["request_id", "position"]).size()
    requests = (
        explored.groupby("request_id", sort=False)
        .agg(unit_id=("unit_id", "first"), served_at=("served_at", "first"))
        .sort_values("served_at", kind="stable")
    )
    row = pd.Index(requests.index).get_indexer(explored["request_id"])
    slot = explored["position"].to_numpy(np.int64) - 1
    n, k = len(requests), int(slot.max()) + 1
    shape = (n, k)
    reward = np.zeros(shape)
    marginal, prefix, inclusion = (np.full(shape, np.nan) for _ in range(3))
    rank = np.zeros(shape, dtype=np.int64)
    items = np.full(shape, None, dtype=object)
    marginal[row, slot] = explored["propensity"].to_numpy(float)
    prefix[row, slot] = explored["prefix_propensity"].to_numpy(float)
    inclusion[row, slot] = explored["inclusion_propensity"].to_numpy(float)
    rank[row, slot] = explored["candidate_rank"].to_numpy(np.int64)
    items[row, slot] = explored["item_id"].to_numpy(object)
    if len(sales):
        keys = sales.index.to_frame(index=False)
        reward[
            pd.Index(requests.index).get_indexer(keys["request_id"]),
            keys["position"].to_numpy(np.int64) - 1,
        ] = sales.to_numpy(float)
    versions = explored.groupby("request_id", sort=False)["model_version"].first()
    _, unit_codes = np.unique(requests["unit_id"].to_numpy(object), return_inverse=True)
    top_m = top_m or int(rank.max())
    slates = SlateLog(
        unit=unit_codes.astype(np.int64),
        reward=reward,
        marginal=marginal,
        prefix=prefix,
        rank=rank,
        candidates=np.full(n, top_m),
        inclusion=inclusion,
    )
    served = requests["served_at"].dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return LoggedRequests(
        slates=slates,
        unit_ids=requests["unit_id"].to_numpy(object),
        served_us=served.astype("int64").to_numpy(),
        items=items,
        versions=versions.reindex(requests.index).astype(str).to_numpy(object),
        top_m=top_m,
    )


@dataclass
class Replay:
    """A version's lists for the logged requests: its answer for each unit (cached per
    unit), minus the listings sold before the request was served."""

    lists: CachedLists
    sold_us: np.ndarray

    @classmethod
    def of(cls, recommender: BundleRecommender, items: pd.DataFrame, depth: int) -> Replay:
        return cls.with_lists(CachedLists(recommender, depth), items, depth)

    @classmethod
    def with_lists(cls, lists: CachedLists, items: pd.DataFrame, depth: int) -> Replay:
        """A replay on already cached lists (at least `depth` deep), with `items`' sales."""
        if lists.depth < depth:
            lists = CachedLists(lists.recommender, depth)
        sold_at = (
            items.assign(item_id=items["item_id"].astype(str))
            .drop_duplicates("item_id", keep="last")
            .set_index("item_id")["sold_at"]
        )
        sold = sold_at.reindex(pd.Index(lists.recommender.item_ids.astype(str)))
        stamps = sold.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
        sold_us = np.where(sold.notna(), stamps.astype("int64"), np.iinfo(np.int64).max)
        return cls(lists, sold_us)

    def ranked(self, logged: LoggedRequests, size: int) -> list[np.ndarray]:
        """For each logged request, the version's first `size` item ids on sale then."""
        units = logged.unit_ids.astype(str)
        self.lists.prefetch(units.tolist())
        item_ids = self.lists.recommender.item_ids
        out = []
        for unit, moment in zip(units, logged.served_us, strict=True):
            cached = self.lists.cached(unit)
            rows = cached[self.sold_us[cached] > moment][:size]
            out.append(item_ids[rows])
        return out


def target_slates(
    logged: LoggedRequests, target: list[np.ndarray], logging: list[np.ndarray]
) -> tuple[TargetSlates, np.ndarray]:
    """The target's lists against the log: slot matches, prefix matches, the rank of each
    target item in the logging arm's list (0 outside its top m, -1 no item) and the logged
    slot that showed it (-1 none); and the number of candidates each logging list had."""
    n, k = logged.items.shape
    match = np.zeros((n, k), dtype=bool)
    rank = np.full((n, k), -1, dtype=np.int64)
    shown_at = np.full((n, k), -1, dtype=np.int64)
    candidates = np.zeros(n, dtype=np.int64)
    for row in range(n):
        mine = target[row][:k]
        theirs = logging[row][: max(logged.top_m, k)]
        candidates[row] = len(theirs)
        match[row, : len(mine)] = mine == logged.items[row, : len(mine)]
        position = {item: at + 1 for at, item in enumerate(theirs)}
        rank[row, : len(mine)] = [position.get(item, 0) for item in mine]
        served = {item: at for at, item in enumerate(logged.items[row]) if item is not None}
        shown_at[row, : len(mine)] = [served.get(item, -1) for item in mine]
    prefix_match = np.cumprod(match, axis=1).astype(bool)
    slates = TargetSlates(match=match, prefix_match=prefix_match, rank=rank, shown_at=shown_at)
    return slates, candidates


def estimate_versions(
    logged: LoggedRequests,
    targets: Mapping[str, Replay],
    logging_arms: Mapping[str, Replay],
    resamples: int = 200,
    estimators: tuple[str, ...] = ESTIMATORS,
    seed: int = 0,
) -> dict[str, OffPolicyResult]:
    """Every target's estimates on the same log and bootstrap resamples (so that two
    targets' differences pair). `logging_arms`: the logging versions' replays, by version,
    for the target items' ranks in the logging lists."""
    n, k = logged.items.shape
    logging_lists: list[np.ndarray] = [np.zeros(0, dtype=object)] * n
    for version, replay in logging_arms.items():
        mine = np.flatnonzero(logged.versions == str(version))
        if not len(mine):
            continue
        ranked = replay.ranked(_subset(logged, mine), max(logged.top_m, k))
        for row, items in zip(mine, ranked, strict=True):
            logging_lists[row] = items
    missing = sorted(set(logged.versions) - {str(v) for v in logging_arms})
    if missing:
        raise ValueError(f"no replay of the logging version(s) {missing}")
    results = {}
    for name, replay in targets.items():
        slates, candidates = target_slates(logged, replay.ranked(logged, k), logging_lists)
        log = replace(logged.slates, candidates=np.maximum(candidates, 1))
        results[name] = estimate(log, slates, estimators, resamples, seed=seed)
    return results


def _subset(logged: LoggedRequests, rows: np.ndarray) -> LoggedRequests:
    return LoggedRequests(
        slates=logged.slates,
        unit_ids=logged.unit_ids[rows],
        served_us=logged.served_us[rows],
        items=logged.items[rows],
        versions=logged.versions[rows],
        top_m=logged.top_m,
    )


def paired_difference(
    results: Mapping[str, OffPolicyResult],
    target: str,
    baseline: str,
    estimator: str,
    alpha: float = 0.05,
) -> dict[str, float]:
    """(target - baseline) / baseline on one estimator, with the interval of the paired
    bootstrap replicates."""
    point_t = results[target].estimates[estimator].value
    point_b = results[baseline].estimates[estimator].value
    boot = (
        results[target].replicates[estimator]
        / np.maximum(results[baseline].replicates[estimator], 1e-12)
        - 1
    )
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return {
        "relative": point_t / point_b - 1 if point_b else float("nan"),
        "low": float(low),
        "high": float(high),
    }


def resolve_version(
    settings: RewearSettings, config: PipelineConfig, model_uri: str
) -> tuple[int, int | None]:
    """The registered version `model_uri` names (models:/<name>/<n>, models:/<name>@alias
    or a bare number), and the current champion's (None: no champion)."""
    from components.registry.registration import CHAMPION, current_alias_version
    from components.registry.tracking import configure_mlflow

    client, _ = configure_mlflow(settings, config.registry.experiment)
    name = config.registry.model_name
    champion = current_alias_version(client, name, CHAMPION)
    reference = model_uri.removeprefix(f"models:/{name}").lstrip("/")
    if reference.isdigit():
        version = int(reference)
        client.get_model_version(name, str(version))  # an unknown version fails here
        return version, champion
    if reference.startswith("@"):
        found = current_alias_version(client, name, reference[1:])
        if found is not None:
            return found, champion
    raise ValueError(
        f"{model_uri!r} names no registered version of {name}: give models:/{name}/<number> "
        f"or models:/{name}@<alias> (off-policy estimates need a registered version)"
    )


def evaluate_off_policy(
    config: PipelineConfig,
    versions: list[int],
    start: pd.Timestamp | None = None,
    end: pd.Timestamp | None = None,
    exposures: pd.DataFrame | None = None,
    interactions: pd.DataFrame | None = None,
    items: pd.DataFrame | None = None,
    estimator: str = "snpbm",
) -> dict[str, Any]:
    """Each registered version's sold listings per session, estimated from the explored
    exposures served in [start, end) (default: all of the log), with intervals and the
    log's support for it; with two versions, the first against the second (`estimator`,
    paired bootstrap). Exposures default to the experiment's log, interactions and items
    to the configured source."""
    from components.registry.experiment_registration import fetch_version_bundle
    from components.registry.tracking import configure_mlflow

    experiment = config.experiment
    settings = RewearSettings()
    configure_mlflow(settings, config.registry.experiment)
    if exposures is None:
        from components.pipeline.experiments import exposure_log_uri

        exposures = open_exposure_sink(exposure_log_uri(experiment, settings)).read(
            start=start, end=end
        )
    exposures = explored_rows(exposures)  # refused before the source is read
    if interactions is None or items is None:
        tables = load_source(config.source)
        interactions = tables.interactions if interactions is None else interactions
        items = tables.items if items is None else items
    logged = logged_requests(exposures, interactions, experiment, experiment.exploration.top_m)
    if not logged.slates.reward.any():
        raise NoSupportError(
            "no sale in the interactions is attributed to the explored sessions (the source "
            "does not cover the logged period): nothing to estimate from"
        )
    depth = experiment.exploration.top_m + 3 * logged.items.shape[1]
    with tempfile.TemporaryDirectory(prefix="rewear-off-policy-") as scratch:
        replays: dict[int, Replay] = {}
        for version in sorted({*versions, *(int(v) for v in set(logged.versions))}):
            bundle = fetch_version_bundle(
                config.registry.model_name, version, Path(scratch) / str(version)
            )
            replays[version] = Replay.of(BundleRecommender.load(bundle), items, depth)
        results = estimate_versions(
            logged,
            {str(version): replays[version] for version in versions},
            {str(version): replays[int(version)] for version in set(logged.versions)},
            resamples=experiment.bootstrap_resamples,
        )
    served = pd.to_datetime(logged.served_us, unit="us", utc=True)
    difference = None
    if len(versions) == 2:
        difference = {
            "estimator": estimator,
            **paired_difference(results, str(versions[0]), str(versions[1]), estimator),
        }
    return {
        **({"difference": difference} if difference else {}),
        "requests": len(logged.unit_ids),
        "units": int(logged.slates.unit.max() + 1),
        "period": [served.min().isoformat(), served.max().isoformat()],
        "logging_versions": sorted({int(v) for v in set(logged.versions)}),
        "logged_value": float(logged.slates.reward.sum() / len(logged.unit_ids)),
        "versions": {
            name: {
                "estimates": {k: e.to_dict() for k, e in result.estimates.items()},
                "support": result.support.to_dict(),
            }
            for name, result in results.items()
        },
    }


def off_policy_comparison(config: PipelineConfig, version: int, champion: int) -> dict[str, Any]:
    """The promotion gate's off-policy figures of `version` against `champion` on the last
    `registry.promotion.off_policy.lookback` of the explored log, or {"skipped": why}
    when the log cannot say (none explored, too few sessions, no attributed sales)."""
    from components.pipeline.experiments import exposure_log_uri

    gate = config.registry.promotion.off_policy
    if not gate.enabled:
        return {"skipped": "registry.promotion.off_policy.enabled is false"}
    exposures = open_exposure_sink(exposure_log_uri(config.experiment, RewearSettings())).read()
    explored = exposures[exposures["policy"] == PLACKETT_LUCE]
    if explored.empty:
        return {"skipped": "no explored sessions in the exposure log"}
    end = explored["served_at"].max()
    recent = explored[explored["served_at"] > end - pd.Timedelta(gate.lookback)]
    sessions = recent["request_id"].nunique()
    if sessions < gate.min_sessions:
        return {
            "skipped": f"{sessions} explored sessions in the last {gate.lookback} of the log, "
            f"fewer than registry.promotion.off_policy.min_sessions ({gate.min_sessions})"
        }
    try:
        result = evaluate_off_policy(
            config, [version, champion], exposures=recent, estimator=gate.estimator
        )
        return skip_when_poorly_covered(result, version, gate.min_covered_slots)
    except NoSupportError as error:
        return {"skipped": str(error)}
    except Exception as error:  # an extra guard: its failure must not fail the retrain
        logger.warning("off-policy check not run: %s", error, exc_info=True)
        return {"skipped": f"the off-policy estimate failed: {error}"}


def skip_when_poorly_covered(
    result: dict[str, Any], version: int, min_covered_slots: float
) -> dict[str, Any]:
    """The result, or {"skipped": why} when too few of the version's slots lie inside the
    logging candidates for its estimate to be compared (unsupported slots count 0)."""
    covered = result["versions"][str(version)]["support"]["covered_slots"]
    if covered < min_covered_slots:
        return {
            "skipped": f"the explored log covers {covered:.0%} of v{version}'s slots, below "
            f"registry.promotion.off_policy.min_covered_slots ({min_covered_slots:.0%}): "
            "the estimate would count the rest as unsold",
            "covered_slots": covered,
        }
    return result
