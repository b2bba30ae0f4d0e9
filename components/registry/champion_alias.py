"""Publishing a promotion decision: its checks and figures as tags on the version, then the
`champion` alias moved to it when it won. One registry call, the last thing a run does, under
a lock per model, and refused when `champion` moved since the comparison."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from mlflow import MlflowClient

from components.registry.promotion_decision import Check, PromotionDecision
from components.registry.registration import CHAMPION, current_alias_version, mlflow_key
from components.store import exclusive_lock

TAG_PREFIX = "promotion."
#: Where the online decision's tags go (`promotion.online.*`), beside the offline gate's.
ONLINE_TAG_PREFIX = f"{TAG_PREFIX}online."


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
    *,
    locks: Path,
    tag_prefix: str = TAG_PREFIX,
) -> PromotionDecision:
    """Tag the version with the decision, then move `champion` to it when it won (the
    online readout's decision comes through here too, tagged `promotion.online.*`).

    If `champion` moved while this run was comparing (a concurrent run promoted another
    version), the comparison is stale and the version is not promoted (unless forced). The
    check and the move happen under `champion_lock`, so two runs that compared with the
    same champion cannot both move it."""
    with champion_lock(model_name, locks):
        return _apply_decision(client, model_name, version, decision, metric, tag_prefix)


def champion_lock(model_name: str, locks: Path) -> AbstractContextManager[None]:
    """Serialises every move of `model_name`'s champion by the runs of one REWEAR_HOME (an
    exclusive lock on `<locks>/<model>.champion.lock`, `locks` being the home's `locks`
    folder; released if the process dies)."""
    return exclusive_lock(Path(locks) / f"{model_name}.champion.lock")


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
