"""What the `rewear` commands print: run reports, evaluation and off-policy tables, a
recommendation list, one-line refresh and experiment summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from flows.cli_setup import console


def print_report(report: dict[str, Any]) -> None:
    """A retrain's report: chain lines, the summary tables, the version and the gate."""
    from components.evaluation.summary import chain_lines

    for line in chain_lines(report):
        console.print(line, highlight=False)
    title = f"rewear retrain — {report['dataset']} ({report['protocol']}, test window)"
    print_summary(title, report["metrics"], report["baselines"], report.get("comparisons"))
    model = report.get("model") or {}
    console.print(
        f"snapshot {report['snapshot_id']} · {report['evaluated_users']} users evaluated · "
        f"registered {model.get('name')} v{model.get('version')} aliases {model.get('aliases')}"
        f" · promoted: {report['promoted']}"
    )
    gate = report.get("promotion") or {}
    if gate:
        why = "; ".join(gate["reasons"]) or "every check passed"
        console.print(f"promotion: {gate['decision']} ({why})")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings_s"].items())
    console.print(f"timings: {timings}")
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"report: {report['report_path']}")


def print_summary(
    title: str,
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    comparisons: dict[str, Any] | None,
) -> None:
    """Two tables: the model beside each baseline, then the bootstrap intervals."""
    from components.evaluation.summary import interval_rows, summary_rows

    console.print(_rows_table(Table(title=title), summary_rows(metrics, baselines)))
    intervals = interval_rows(comparisons)
    console.print(_rows_table(Table(title="paired bootstrap over users"), intervals))


def _rows_table(table: Table, rows: list[dict[str, Any]]) -> Table:
    """Fill a rich table from summary rows (metric, model, baselines, intervals)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    return table


def write_result(result: dict[str, Any], output: Path | None) -> None:
    """`--json`: the printed result, written as JSON too."""
    if output is None:
        return
    import json

    output.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"written: {output}")


def print_off_policy(result: dict[str, Any]) -> None:
    """`evaluate --off-policy`: each version's estimates, its support, the difference."""
    table = Table(
        title=f"{result['model_uri']} off-policy: sold listings per session, "
        f"{result['requests']} explored sessions of {result['units']} users "
        f"({result['period'][0][:10]} to {result['period'][1][:10]}; logged "
        f"{result['logged_value']:.4f})"
    )
    table.add_column("version")
    table.add_column("estimator")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    for version, found in result["versions"].items():
        for name, value in found["estimates"].items():
            table.add_row(
                f"v{version}",
                name,
                f"{value['value']:.4f}",
                f"[{value['low']:.4f}, {value['high']:.4f}]",
            )
    console.print(table)
    for version, found in result["versions"].items():
        support = found["support"]
        console.print(
            f"v{version}: {support['covered_slots']:.0%} of its slots inside the logged "
            f"candidates, {support['matched_slots']:.1%} of logged slots matched, "
            f"effective sample {support['effective_share']:.1%} of the sessions (same slot), "
            f"{support.get('effective_share_position_based', float('nan')):.1%} (any slot)",
            markup=False,
        )
    if "difference" in result:
        difference = result["difference"]
        console.print(
            f"v{result['version']} against champion v{result['champion']} "
            f"({difference['estimator']}): {difference['relative']:+.2%} "
            f"[{difference['low']:+.2%}, {difference['high']:+.2%}]",
            markup=False,
        )


def print_evaluation(result: dict[str, Any]) -> None:
    """`evaluate`: the version's summary tables on the snapshot's window."""
    title = (
        f"{result['model_uri']} on snapshot {result['snapshot_id']} ({result['stage']}, "
        f"{result['evaluated_users']} users)"
    )
    print_summary(title, result["metrics"], result["baselines"], result["comparisons"])


def recommendation_table(answer: Any, title: str) -> Table:
    """One row per recommended item: rank, item, title, category, price, score, source."""
    import pandas as pd

    table = Table(title=title)
    for column, justify in (
        ("rank", "right"),
        ("item", "left"),
        ("title", "left"),
        ("category", "left"),
        ("price", "right"),
        ("score", "right"),
        ("source", "left"),
    ):
        table.add_column(column, justify=justify)
    for row in answer.itertuples():
        table.add_row(
            str(row.rank),
            str(row.item_id),
            "" if pd.isna(row.title) else str(row.title),
            "" if pd.isna(row.category) else str(row.category),
            "" if pd.isna(row.price) else f"{row.price:.2f}",
            f"{row.score:.4f}",
            str(row.source),
        )
    return table


def refresh_summary(result: dict[str, Any]) -> str:
    """One line on what `refresh-index` did (nothing, when no data is newer)."""
    refresh = result.get("refresh", {})
    if result["status"] == "unchanged":
        return (
            f"unchanged: no data newer than champion v{result.get('source_version')}'s "
            f"({refresh.get('built_until')}), nothing registered, {result['duration_s']:.1f}s"
        )
    return (
        f"{result['status']}: v{result.get('source_version')} -> v{result.get('version')} "
        f"(aliases {', '.join(result.get('aliases') or []) or 'none'}), "
        f"{refresh.get('new_listings')} new listings, {refresh.get('dropped_listings')} "
        f"dropped, {refresh.get('available_listings')} indexed, {result['duration_s']:.1f}s"
    )


def print_experiment(summary: dict[str, Any]) -> None:
    """An experiment's readout: the primary metric's effect and interval, then the verdict."""
    readout = summary["readout"]
    primary = readout["primary"]
    console.print(
        f"experiment {summary['experiment_id']} ({readout['design']}, {readout['days']:.0f} "
        f"days, units {readout['units']}): {readout['primary_metric']} per unit "
        f"{primary['treatment_mean']:.4f} vs {primary['control_mean']:.4f}, "
        f"{primary['relative']:+.2%} [{readout['relative_low']:+.2%}, "
        f"{readout['relative_high']:+.2%}] (always-valid)",
        markup=False,
    )
    if readout.get("interference_bias") is not None:
        console.print(
            f"global effect {readout['global_effect']:+.4f}, interference bias "
            f"{readout['interference_bias']:+.4f}",
            markup=False,
        )
    if summary["verdict"] == "a/a":
        console.print(
            f"verdict: a/a (v{summary['control_version']} against itself: a check of the "
            "loop, nothing to decide; champion unchanged)",
            markup=False,
        )
        return
    why = "; ".join(summary["reasons"]) or "every check passed"
    console.print(f"verdict: {summary['verdict']} ({why})", markup=False)
