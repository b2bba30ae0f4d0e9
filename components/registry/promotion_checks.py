"""The offline promotion gate's rules, one `Check` each: non-inferiority on the promotion
metric against champion, the exposure guard, the off-policy estimate, coverage, the smoke
test and its p99 latency; and the figures the decision records beside them."""

from __future__ import annotations

from typing import Any, Literal

from components.config import PromotionConfig
from components.registry.promotion_decision import Check
from components.registry.promotion_smoke import SMOKE_K, SmokeResult


def off_policy_check(comparison: dict[str, Any] | None, config: PromotionConfig) -> list[Check]:
    """Held back before any traffic when the explored log says the challenger is clearly
    worse: the upper end of its relative difference from champion below -margin."""
    found = (comparison or {}).get("off_policy")
    if found is None:
        return []
    name = "off-policy vs champion"
    if "skipped" in found:
        return [Check(name, True, None, None, f"skipped: {found['skipped']}")]
    gate = config.off_policy
    difference = found["difference"]
    passed = difference["high"] >= -gate.margin
    detail = (
        f"{difference['estimator']} sold listings per session {difference['relative']:+.1%} "
        f"[{difference['low']:+.1%}, {difference['high']:+.1%}] against champion on "
        f"{found['requests']} explored sessions; held back below -{gate.margin:.0%}"
    )
    return [Check(name, passed, float(difference["relative"]), -gate.margin, detail)]


def smoke_check(smoke: SmokeResult) -> Check:
    """Passes when the version loaded and answered in the fresh process."""
    return Check(
        "smoke",
        smoke.ok,
        None,
        None,
        "loads from the registry in a fresh process and answers"
        if smoke.ok
        else "the version does not load or answer in a fresh process: " + "; ".join(smoke.problems),
    )


def comparison_figures(comparison: dict[str, Any] | None, metric: str) -> dict[str, float]:
    """The compared metric's figures (empty without a comparable champion)."""
    if not comparison or not comparison.get("comparable"):
        return {}
    interval = comparison.get("intervals", {}).get(metric)
    if interval is None:
        return {}
    figures = {key: float(interval[key]) for key in ("difference", "low", "high")}
    for side in ("challenger", "champion"):
        if metric in comparison.get(side, {}):
            figures[side] = float(comparison[side][metric])
    figures["evaluated_users"] = float(comparison.get("evaluated_users") or 0)
    return figures


def comparison_check(comparison: dict[str, Any] | None, config: PromotionConfig) -> Check:
    """Non-inferiority on `config.metric`: the interval's lower end above -margin, on at
    least `min_users` users (no champion: passes; no comparable window: fails)."""
    name = f"{config.metric} vs champion"
    if comparison is None:
        return Check(name, True, None, None, "no champion yet: nothing to compare with")
    version = comparison["champion_version"]
    if not comparison.get("comparable"):
        return Check(
            name,
            False,
            None,
            None,
            f"not comparable with champion v{version}: {comparison.get('reason')}; "
            "the champion stays until a run has data neither model has seen",
        )
    users = int(comparison.get("evaluated_users") or 0)
    if users < config.min_users:
        return Check(
            name,
            False,
            users,
            config.min_users,
            f"only {users} users to compare with champion v{version} "
            f"(registry.promotion.min_users={config.min_users})",
        )
    interval = comparison.get("intervals", {}).get(config.metric)
    if interval is None:
        return Check(
            name,
            False,
            None,
            None,
            f"the comparison has no {config.metric}; set registry.promotion.metric to one "
            f"of {sorted(comparison.get('intervals', {}))}",
        )
    low = float(interval["low"])
    passed = bool(low >= -config.margin)
    verdict = "not worse" if passed else "worse"
    return Check(
        name,
        passed,
        low,
        -config.margin,
        f"{verdict} than champion v{version} beyond the margin: {config.metric} difference "
        f"{interval['difference']:+.4f} [{low:+.4f}, {float(interval['high']):+.4f}] over "
        f"{users} users, margin {config.margin}",
    )


#: The exposure figures the guard compares: (the way that is more concentrated, the
#: PromotionConfig field holding the tolerated change, what the figure is).
EXPOSURE_RULES: dict[str, tuple[Literal["higher", "lower"], str, str]] = {
    "gini_sellers@20": ("higher", "max_seller_gini_increase", "seller-exposure Gini"),
    "new_item_exposure@20": (
        "lower",
        "max_new_listing_exposure_drop",
        "share of list slots on new listings",
    ),
}


def _exposure_bound(metric: str, config: PromotionConfig) -> float:
    """The limit the interval must cross to hold the challenger back (signed)."""
    worse, field_name, _ = EXPOSURE_RULES[metric]
    margin = float(getattr(config, field_name))
    return margin if worse == "higher" else -margin


def exposure_checks(comparison: dict[str, Any] | None, config: PromotionConfig) -> list[Check]:
    """One check per exposure figure: fails only when the whole interval of challenger -
    champion lies beyond the tolerated change in the concentrating direction."""
    checks = []
    for metric, (worse, field_name, what) in EXPOSURE_RULES.items():
        name = f"{metric} vs champion"
        bound = _exposure_bound(metric, config)
        if comparison is None or not comparison.get("comparable"):
            # Without a champion there is nothing to compare; without a comparable window
            # the metric check already holds the challenger back.
            checks.append(Check(name, True, None, bound, f"{metric}: not compared"))
            continue
        interval = comparison.get("intervals", {}).get(metric)
        if interval is None:
            detail = f"{metric} not measured (the data has no seller ids or listing dates)"
            checks.append(Check(name, True, None, bound, detail))
            continue
        low, high = float(interval["low"]), float(interval["high"])
        nearest = low if worse == "higher" else high
        concentrated = nearest > bound if worse == "higher" else nearest < bound
        enforced = config.exposure_guard
        verdict = (
            f"clearly {worse} than champion v{comparison['champion_version']}'s"
            if concentrated
            else f"not clearly {worse} than champion v{comparison['champion_version']}'s"
        )
        detail = (
            f"{what} ({metric}) {verdict} beyond registry.promotion.{field_name} "
            f"{abs(bound)}: difference {float(interval['difference']):+.4f} "
            f"[{low:+.4f}, {high:+.4f}]"
        )
        if concentrated and not enforced:
            detail += " (not enforced: registry.promotion.exposure_guard is false)"
        checks.append(Check(name, not (concentrated and enforced), nearest, bound, detail))
    return checks


def exposure_figures(
    comparison: dict[str, Any] | None, config: PromotionConfig
) -> dict[str, dict[str, float]]:
    """The exposure guard's figures and bounds per compared exposure metric."""
    if not comparison or not comparison.get("comparable"):
        return {}
    figures = {}
    for metric in EXPOSURE_RULES:
        interval = comparison.get("intervals", {}).get(metric)
        if interval is None:
            continue
        figures[metric] = {
            "challenger": float(interval["model"]),
            "champion": float(interval["other"]),
            **{key: float(interval[key]) for key in ("difference", "low", "high")},
            "bound": _exposure_bound(metric, config),
        }
    return figures


def coverage_check(metrics: dict[str, float], config: PromotionConfig) -> Check:
    """The challenger's `coverage_metric` on the test window, at least `min_coverage`."""
    name = config.coverage_metric
    raw = metrics.get(name)
    value = None if raw is None else float(raw)
    if value is None:
        passed = config.min_coverage <= 0
        return Check(name, passed, None, config.min_coverage, f"{name} was not measured")
    passed = bool(value >= config.min_coverage)
    relation = ">=" if passed else "<"
    return Check(
        name,
        passed,
        value,
        config.min_coverage,
        f"{name} {value:.4f} {relation} registry.promotion.min_coverage {config.min_coverage}",
    )


def latency_check(smoke: SmokeResult, config: PromotionConfig) -> Check:
    """The smoke requests' p99 latency, at most `max_p99_latency_ms`."""
    name = "p99 latency (ms)"
    if smoke.p99_ms is None:
        return Check(name, False, None, config.max_p99_latency_ms, "latency not measured")
    passed = bool(smoke.p99_ms <= config.max_p99_latency_ms)
    relation = "<=" if passed else ">"
    return Check(
        name,
        passed,
        smoke.p99_ms,
        config.max_p99_latency_ms,
        f"p99 {smoke.p99_ms:.1f} ms over {smoke.requests} requests (k={SMOKE_K}) {relation} "
        f"registry.promotion.max_p99_latency_ms {config.max_p99_latency_ms}",
    )
