"""The promotion gate: does a newly registered version replace `champion`?

`run_gate` runs three steps, each usable alone:
- `smoke_in_fresh_process` loads the version from the registry in a new interpreter and
  times smoke requests (a known user, an unknown user, an anonymous session);
- `decide` turns the paired comparison with the champion (`evaluation_steps.compare_with_champion`),
  the challenger's test metrics and the smoke result into a `PromotionDecision` (pure);
- `apply_decision` writes the decision and its figures onto the version's tags and only
  then moves the `champion` alias: one registry call, the last thing a run does. A run
  that dies before it leaves `champion` where it was.

Rules (PromotionConfig): non-inferiority on `metric` (lower end of the paired-bootstrap
95% interval of challenger - champion above `-margin`), on at least `min_users` users of
data neither model has seen; without a comparable window the champion stays. Exposure
guard (`exposure_guard`, on by default): the challenger is held back when its exposure is
clearly more concentrated than champion's on those users, paired over the same users
(`bootstrap.compare_exposure`: a grouped jackknife, each replicate recomputing the
list-level figure without one group of users): the seller-exposure Gini@20 interval wholly above
`+max_seller_gini_increase`, or the new-listing exposure@20 interval wholly below
`-max_new_listing_exposure_drop`. "Clearly": the gate asks for evidence of harm, not proof
of its absence, so a small or noisy window never blocks a fair model on exposure alone.
Guardrails: the smoke requests pass, their p99 latency and the test coverage are within
bounds.
`force` promotes past a failed comparison or guardrail bound (recorded as `forced`), never
past a version that does not load or answer: that would take serving down.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from mlflow import MlflowClient

from components.config import PromotionConfig
from components.registry.registration import (
    CHAMPION,
    current_alias_version,
    mlflow_key,
    model_uri,
)
from components.store import exclusive_lock

SMOKE_SCRIPT = Path(__file__).resolve().parents[1] / "serving" / "smoke_check.py"
SMOKE_K = 20
#: A user id no marketplace uses: the smoke request for the unknown-user fallback.
UNKNOWN_SMOKE_USER = "rewear-smoke-unknown-user"
TAG_PREFIX = "promotion."

#: `awaiting_experiment`: the offline checks passed under `registry.promotion.online`; the
#: version stays `challenger` until an online experiment's readout decides.
Decision = Literal["promoted", "rejected", "forced", "awaiting_experiment"]
#: Where the online decision's tags go (`promotion.online.*`), beside the offline gate's.
ONLINE_TAG_PREFIX = f"{TAG_PREFIX}online."


@dataclass(frozen=True)
class SmokeResult:
    """What the fresh process saw: did the version load and answer, and how fast."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    load_s: float | None = None
    #: The untimed first pass over the smoke requests (checks answers, warms lazy state).
    first_pass_ms: float | None = None
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float | str | None
    bound: float | str | None
    detail: str


@dataclass(frozen=True)
class PromotionDecision:
    decision: Decision
    champion_version: int | None
    checks: list[Check]
    smoke: SmokeResult
    #: The compared metric: challenger and champion values, difference and its interval,
    #: evaluated users (empty without a comparable champion).
    figures: dict[str, float] = field(default_factory=dict)
    #: The exposure guard's figures per compared exposure metric (`gini_sellers@20`,
    #: `new_item_exposure@20`): challenger, champion, difference, low, high, and the
    #: `bound` the interval was held to (empty without a comparable champion).
    exposure: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def promote(self) -> bool:
        return self.decision in ("promoted", "forced")

    @property
    def reasons(self) -> list[str]:
        """Why the gate said no (empty when every check passed)."""
        return [check.detail for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "promoted": self.promote,
            "champion_version": self.champion_version,
            "reasons": self.reasons,
            "figures": self.figures,
            "exposure": self.exposure,
            "checks": [asdict(check) for check in self.checks],
            "smoke": asdict(self.smoke),
        }


def smoke_requests(bundle_dir: Path, example_user_id: str | None) -> list[dict[str, Any]]:
    """Request rows for the smoke test: a known user (when the bundle has one), an unknown
    user, and an anonymous session over two available listings."""
    catalogue = pd.read_parquet(
        Path(bundle_dir) / "items.parquet", columns=["item_id", "available"]
    )
    listed = catalogue.loc[catalogue["available"], "item_id"].astype(str).head(2).tolist()
    rows: list[dict[str, Any]] = [{"user_id": UNKNOWN_SMOKE_USER}]
    if example_user_id is not None:
        rows.insert(0, {"user_id": example_user_id})
    if listed:
        rows.append({"recent_item_ids": listed})
    return rows


def smoke_in_fresh_process(
    tracking_uri: str,
    model_uri: str,
    requests: list[dict[str, Any]],
    n_requests: int,
    timeout_s: float,
) -> SmokeResult:
    """Load `model_uri` from the registry in a new Python process and send `n_requests`
    single-row requests (cycling through `requests`, k = SMOKE_K)."""
    job = {
        "tracking_uri": tracking_uri,
        "model_uri": model_uri,
        "requests": requests,
        "n_requests": n_requests,
        "k": SMOKE_K,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-P", str(SMOKE_SCRIPT)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return SmokeResult(ok=False, problems=[f"no answer within {timeout_s:.0f} s"])
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = done.stderr.strip().splitlines()[-3:]
        return SmokeResult(ok=False, problems=[f"exit code {done.returncode}: {' | '.join(tail)}"])
    return SmokeResult(**result)


def decide(
    comparison: dict[str, Any] | None,
    metrics: dict[str, float],
    smoke: SmokeResult,
    config: PromotionConfig,
    force: bool = False,
) -> PromotionDecision:
    """The gate's verdict from the champion comparison (None: there is no champion), the
    challenger's test metrics and the fresh-process smoke result."""
    champion_version = None if comparison is None else int(comparison["champion_version"])
    checks = [
        _comparison_check(comparison, config),
        *_exposure_checks(comparison, config),
        *_off_policy_check(comparison, config),
        _coverage_check(metrics, config),
        _smoke_check(smoke),
        _latency_check(smoke, config),
    ]
    if all(check.passed for check in checks):
        # Online promotion: with a champion to test against, the offline gate only
        # nominates; `rewear experiment` decides.
        online = config.online and champion_version is not None and not force
        decision: Decision = "awaiting_experiment" if online else "promoted"
    elif force and smoke.ok:
        decision = "forced"
    else:
        decision = "rejected"
    return PromotionDecision(
        decision,
        champion_version,
        checks,
        smoke,
        _figures(comparison, config.metric),
        _exposure_figures(comparison, config),
    )


def decide_refresh(
    source_version: int, smoke: SmokeResult, answer_problems: list[str], config: PromotionConfig
) -> PromotionDecision:
    """An index refresh's verdict. It keeps the encoder and ranker of the champion it was
    refreshed from (`source_version`), so there is no metric to compare: it replaces that
    champion when it loads and answers in a fresh process within the latency bound and
    answered every smoke user with listings on sale (`answer_problems` empty).
    `apply_decision` then holds it back if `champion` moved meanwhile."""
    answers = Check(
        "available answers",
        not answer_problems,
        len(answer_problems),
        0,
        "every smoke user answered with listings on sale"
        if not answer_problems
        else "; ".join(answer_problems),
    )
    checks = [_smoke_check(smoke), _latency_check(smoke, config), answers]
    decision: Decision = "promoted" if all(check.passed for check in checks) else "rejected"
    return PromotionDecision(decision, source_version, checks, smoke)


def _off_policy_check(comparison: dict[str, Any] | None, config: PromotionConfig) -> list[Check]:
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


def _smoke_check(smoke: SmokeResult) -> Check:
    return Check(
        "smoke",
        smoke.ok,
        None,
        None,
        "loads from the registry in a fresh process and answers"
        if smoke.ok
        else "the version does not load or answer in a fresh process: " + "; ".join(smoke.problems),
    )


def _figures(comparison: dict[str, Any] | None, metric: str) -> dict[str, float]:
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


def _comparison_check(comparison: dict[str, Any] | None, config: PromotionConfig) -> Check:
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


def _exposure_checks(comparison: dict[str, Any] | None, config: PromotionConfig) -> list[Check]:
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


def _exposure_figures(
    comparison: dict[str, Any] | None, config: PromotionConfig
) -> dict[str, dict[str, float]]:
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


def _coverage_check(metrics: dict[str, float], config: PromotionConfig) -> Check:
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


def _latency_check(smoke: SmokeResult, config: PromotionConfig) -> Check:
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


def decision_tags(
    decision: PromotionDecision, metric: str, prefix: str = TAG_PREFIX
) -> dict[str, str]:
    """The decision and its figures as version tags (`promotion.*`, or `prefix`)."""
    tags = {
        "decision": decision.decision,
        "forced": str(decision.decision == "forced").lower(),
        "champion_version": "none"
        if decision.champion_version is None
        else str(decision.champion_version),
        "reasons": " | ".join(decision.reasons)[:4000] or "all checks passed",
    }
    for check in decision.checks:
        key = mlflow_key(check.name).replace(" ", "_").replace("(", "").replace(")", "")
        tags[f"{key}.passed"] = str(check.passed).lower()
        if isinstance(check.value, float | int):
            tags[f"{key}.value"] = f"{check.value:.6g}"
        if check.detail.startswith("skipped:"):  # a check that could not act says why
            tags[f"{key}.skipped"] = check.detail.removeprefix("skipped:").strip()[:500]
    for key, value in decision.figures.items():
        name = key if key == "evaluated_users" else f"{mlflow_key(metric)}.{key}"
        tags[name] = f"{value:.0f}" if key == "evaluated_users" else f"{value:.6f}"
    for exposure_metric, values in decision.exposure.items():
        for key, value in values.items():
            tags[f"{mlflow_key(exposure_metric)}.{key}"] = f"{value:.6f}"
    if decision.smoke.p50_ms is not None:
        tags["smoke_p50_ms"] = f"{decision.smoke.p50_ms:.2f}"
    return {f"{prefix}{key}": value for key, value in tags.items()}


def apply_decision(
    client: MlflowClient,
    model_name: str,
    version: int,
    decision: PromotionDecision,
    metric: str,
    tag_prefix: str = TAG_PREFIX,
) -> PromotionDecision:
    """Tag the version with the decision, then move `champion` to it when it won (the
    online readout's decision comes through here too, tagged `promotion.online.*`).

    If `champion` moved while this run was comparing (a concurrent run promoted another
    version), the comparison is stale and the version is not promoted (unless forced). The
    check and the move happen under `champion_lock`, so two runs that compared with the
    same champion cannot both move it."""
    with champion_lock(model_name):
        return _apply_decision(client, model_name, version, decision, metric, tag_prefix)


def champion_lock(model_name: str) -> AbstractContextManager[None]:
    """Serialises every move of `model_name`'s champion by the runs of this REWEAR_HOME (an
    exclusive lock on `REWEAR_HOME/locks/<model>.champion.lock`, released if the process
    dies)."""
    from components.settings import RewearSettings

    return exclusive_lock(RewearSettings().root / "locks" / f"{model_name}.champion.lock")


def _apply_decision(
    client: MlflowClient,
    model_name: str,
    version: int,
    decision: PromotionDecision,
    metric: str,
    tag_prefix: str,
) -> PromotionDecision:
    current = current_alias_version(client, model_name, CHAMPION)
    if decision.promote and current != decision.champion_version and decision.decision != "forced":
        stale = Check(
            "champion unchanged",
            False,
            None if current is None else current,
            decision.champion_version,
            f"champion moved to v{current} while this run compared with "
            f"v{decision.champion_version}; retrain again to compare with it",
        )
        decision = PromotionDecision(
            "rejected",
            decision.champion_version,
            [*decision.checks, stale],
            decision.smoke,
            decision.figures,
            decision.exposure,
        )
    for key, value in decision_tags(decision, metric, tag_prefix).items():
        client.set_model_version_tag(model_name, str(version), key, value)
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION, str(version))
    return decision


def fresh_smoke(
    tracking_uri: str,
    model_name: str,
    version: int,
    bundle_dir: Path,
    example_user_id: str | None,
    config: PromotionConfig,
) -> SmokeResult:
    """The gate's smoke test of `model_name` v`version`: loaded from the registry in a
    fresh process, asked the smoke requests `config.latency_requests` times."""
    return smoke_in_fresh_process(
        tracking_uri,
        model_uri(model_name, version=version),
        smoke_requests(bundle_dir, example_user_id),
        config.latency_requests,
        config.smoke_timeout_s,
    )


def run_gate(
    client: MlflowClient,
    tracking_uri: str,
    model_name: str,
    version: int,
    bundle_dir: Path,
    example_user_id: str | None,
    comparison: dict[str, Any] | None,
    metrics: dict[str, float],
    config: PromotionConfig,
    force: bool = False,
) -> PromotionDecision:
    """Smoke-test `model_name` v`version` in a fresh process, decide, tag, maybe promote."""
    smoke = fresh_smoke(tracking_uri, model_name, version, bundle_dir, example_user_id, config)
    decision = decide(comparison, metrics, smoke, config, force)
    return apply_decision(client, model_name, version, decision, config.metric)
