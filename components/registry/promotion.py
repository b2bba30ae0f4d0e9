"""The promotion gate: does a newly registered version replace `champion`?

`run_gate` runs three steps, each usable alone:
- `fresh_smoke` (`promotion_smoke`) loads the version from the registry in a new
  interpreter and times smoke requests (a known user, an unknown user, an anonymous session);
- `decide` turns the paired comparison with the champion (`evaluation_steps.compare_with_champion`),
  the challenger's test metrics and the smoke result into a `PromotionDecision` (pure; one
  `Check` per rule of `promotion_checks`);
- `apply_decision` (`champion_alias`) writes the decision and its figures onto the
  version's tags and only then moves the `champion` alias: one registry call, the last
  thing a run does. A run that dies before it leaves `champion` where it was.

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

from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from components.config import PromotionConfig
from components.registry.champion_alias import apply_decision
from components.registry.promotion_checks import (
    comparison_check,
    comparison_figures,
    coverage_check,
    exposure_checks,
    exposure_figures,
    latency_check,
    off_policy_check,
    smoke_check,
)
from components.registry.promotion_decision import Check, Decision, PromotionDecision
from components.registry.promotion_smoke import SmokeResult, fresh_smoke


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
        comparison_check(comparison, config),
        *exposure_checks(comparison, config),
        *off_policy_check(comparison, config),
        coverage_check(metrics, config),
        smoke_check(smoke),
        latency_check(smoke, config),
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
        comparison_figures(comparison, config.metric),
        exposure_figures(comparison, config),
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
    checks = [smoke_check(smoke), latency_check(smoke, config), answers]
    decision: Decision = "promoted" if all(check.passed for check in checks) else "rejected"
    return PromotionDecision(decision, source_version, checks, smoke)


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
    locks: Path,
    force: bool = False,
) -> PromotionDecision:
    """Smoke-test `model_name` v`version` in a fresh process, decide, tag, maybe promote
    (the move under the home's champion lock in `locks`)."""
    smoke = fresh_smoke(tracking_uri, model_name, version, bundle_dir, example_user_id, config)
    decision = decide(comparison, metrics, smoke, config, force)
    return apply_decision(client, model_name, version, decision, config.metric, locks=locks)
