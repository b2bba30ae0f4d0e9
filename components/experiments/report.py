"""How a readout is shown: a markdown summary (the Prefect artifact, the CLI) and the plot
of the primary metric's interval over days (MLflow)."""

from __future__ import annotations

from typing import Any

import numpy as np


def readout_markdown(summary: dict[str, Any]) -> str:
    """The readout summary (`ReadoutResult.summary()` or a simulate result) as markdown."""
    readout = summary["readout"]
    primary = readout["primary"]
    health = readout["health"]
    lines = [
        f"# Experiment {summary['experiment_id']}: {summary['verdict']}",
        "",
        f"Design `{readout['design']}`, {readout['days']:.1f} days, units "
        + ", ".join(f"{arm} {count}" for arm, count in readout["units"].items())
        + f", {readout['requests']} requests, {readout['slots']} served slots.",
        "",
        "## Health",
        f"- sample-ratio check: chi2 {health['srm_chi2']:.2f}, p {health['srm_p_value']:.3g}"
        + (" **ALARM**" if health["srm_alarm"] else ""),
        f"- exposure log complete: {health['log_completeness']:.2%} of requests",
        f"- units in both arms: {health['units_in_both_arms']}; sold listings served: "
        f"{health['sold_listings_served']}",
        "",
        f"## Primary: {readout['primary_metric']} per assigned unit",
        f"- treatment {primary['treatment_mean']:.4f}, control {primary['control_mean']:.4f}, "
        f"difference {primary['difference']:+.4f} ({primary['relative']:+.2%})",
        f"- always-valid interval [{primary['low']:+.4f}, {primary['high']:+.4f}] "
        f"(relative [{readout['relative_low']:+.2%}, {readout['relative_high']:+.2%}])",
    ]
    if readout.get("preference"):
        preference = readout["preference"]
        lines.append(
            f"- interleaving preference for treatment {preference['share_treatment']:.3f} "
            f"[{preference['low']:.3f}, {preference['high']:.3f}] ({preference['wins_treatment']}"
            f" vs {preference['wins_control']} units, {preference['ties']} ties)"
        )
    if readout.get("interference_bias") is not None:
        lines.append(
            f"- global effect (100% vs 100%): {readout['global_effect']:+.4f}; A/B estimate "
            f"minus it (interference bias): {readout['interference_bias']:+.4f}"
        )
    lines += [
        "",
        "| metric | difference (CUPED) | interval | variance removed |",
        "|---|---|---|---|",
    ]
    for metric, estimates in readout["metrics"].items():
        chosen = estimates.get("cuped", estimates["raw"])
        reduction = readout["cuped_variance_reduction"].get(metric)
        lines.append(
            f"| {metric} | {chosen['difference']:+.4f} | [{chosen['low']:+.4f}, "
            f"{chosen['high']:+.4f}] | {'' if reduction is None else f'{reduction:.1%}'} |"
        )
    lines += [
        "",
        "| guardrail | control | treatment | difference | interval |",
        "|---|---|---|---|---|",
    ]
    for name, guard in readout["guardrails"].items():
        lines.append(
            f"| {name} | {guard['control']:.4f} | {guard['treatment']:.4f} | "
            f"{guard['difference']:+.4f} | [{guard['low']:+.4f}, {guard['high']:+.4f}] |"
        )
    lines += [
        "",
        "| day | units | difference | always-valid | fixed horizon |",
        "|---|---|---|---|---|",
    ]
    for row in readout["daily"]:
        lines.append(
            f"| {row['day']:.0f} | {row['units']:.0f} | {row['difference']:+.4f} | "
            f"[{row['low']:+.4f}, {row['high']:+.4f}] | [{row['fixed_low']:+.4f}, "
            f"{row['fixed_high']:+.4f}] |"
        )
    if summary.get("reasons"):
        lines += ["", "## Why", *[f"- {reason}" for reason in summary["reasons"]]]
    return "\n".join(lines) + "\n"


def interval_figure(daily: list[dict[str, float]], metric: str) -> Any:
    """The primary difference by day with its always-valid and fixed-horizon intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    days = np.array([row["day"] for row in daily])
    if len(days):
        axis.fill_between(
            days,
            [row["low"] for row in daily],
            [row["high"] for row in daily],
            alpha=0.25,
            label="always-valid (daily looks)",
        )
        axis.plot(days, [row["fixed_low"] for row in daily], "k--", lw=0.8, label="fixed horizon")
        axis.plot(days, [row["fixed_high"] for row in daily], "k--", lw=0.8)
        axis.plot(days, [row["difference"] for row in daily], "o-", label="treatment - control")
    axis.axhline(0.0, color="grey", lw=0.8)
    axis.set_xlabel("day of the experiment")
    axis.set_ylabel(f"{metric} per unit, difference")
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure
