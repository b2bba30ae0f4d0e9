"""Readable summaries of an evaluation: the same rows feed the CLI table, the Prefect
markdown and table artifacts, and `rewear evaluate`."""

from __future__ import annotations

from collections import Counter
from typing import Any

from components.config import FAIRNESS_METRICS, recommender_line

HEADLINE_METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@100", "ndcg@100")


def summary_rows(
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    comparisons: dict[str, dict[str, dict[str, Any]]] | None = None,
    names: tuple[str, ...] = HEADLINE_METRICS,
) -> list[dict[str, Any]]:
    """One row per metric: the model, each baseline, and model - baseline intervals."""
    rows = []
    for name in names:
        if name not in metrics:
            continue
        row: dict[str, Any] = {"metric": name, "model": round(metrics[name], 4)}
        for baseline, values in baselines.items():
            row[baseline] = round(values[name], 4) if name in values else None
        for baseline, per_metric in (comparisons or {}).items():
            interval = per_metric.get(name)
            if interval is not None:
                row[f"Δ vs {baseline}"] = format_interval(interval)
        rows.append(row)
    return rows


def interval_rows(
    comparisons: dict[str, dict[str, dict[str, Any]]] | None,
) -> list[dict[str, Any]]:
    """One row per (baseline, metric): model - baseline with its 95% bootstrap interval."""
    rows = []
    for baseline, per_metric in (comparisons or {}).items():
        for metric, interval in per_metric.items():
            rows.append(
                {
                    "metric": metric,
                    "vs": baseline,
                    "model − baseline [95% CI]": format_interval(interval),
                }
            )
    return rows


def fairness_rows(
    metrics: dict[str, float], baselines: dict[str, dict[str, float]], k: int
) -> list[dict[str, Any]]:
    rows = []
    for name in FAIRNESS_METRICS:
        key = f"{name}@{k}"
        if key not in metrics:
            continue
        row: dict[str, Any] = {"metric": key, "model": round(metrics[key], 4)}
        for baseline, values in baselines.items():
            row[baseline] = round(values[key], 4) if key in values else None
        rows.append(row)
    return rows


def format_interval(interval: dict[str, Any]) -> str:
    """`+0.0123 [+0.0050, +0.0190]`, flagged when the 95% interval contains 0."""
    text = f"{interval['difference']:+.4f} [{interval['low']:+.4f}, {interval['high']:+.4f}]"
    return text if interval.get("significant") else f"{text} (n.s.)"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = ["" if row.get(c) is None else str(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chain_lines(report: dict[str, Any]) -> list[str]:
    """One line per stage of the chain that ran: the encoder (time, epochs), the Annoy index
    (size, ANN recall vs exact search), the candidates (recall per source) and the ranker."""
    lines = [f"model: {recommender_line(report.get('recommender') or {})}"]
    retrieval = report.get("retrieval") or {}
    epochs = retrieval.get("encoder_epochs") or []
    if epochs:
        phases = Counter(str(epoch.get("phase", "fit")) for epoch in epochs)
        counted = " + ".join(f"{count} {phase}" for phase, count in phases.items())
        lines.append(
            f"two-tower encoder: trained in {retrieval['encoder_training_s']:.1f} s, "
            f"{len(epochs)} epochs ({counted})"
        )
    recall = next(
        ((key, value) for key, value in retrieval.items() if key.startswith("ann_recall@")), None
    )
    if recall is not None:
        lines.append(
            f"Annoy index: {retrieval.get('serving_items', 0):,} listings served "
            f"({retrieval.get('evaluation_items', 0):,} at the test cut-off), "
            f"ANN {recall[0].removeprefix('ann_')} {recall[1]:.3f} vs exact search, "
            f"query p50 {retrieval.get('query_p50_ms', float('nan')):.2f} ms"
        )
    candidates = report.get("candidate_recall") or {}
    if candidates:
        n = (retrieval.get("candidates") or {}).get("n", "N")
        per_source = ", ".join(f"{name} {value:.4f}" for name, value in candidates.items())
        lines.append(f"candidate recall@{n}: {per_source}")
    ranking = report.get("ranking") or {}
    if ranking:
        lines.append(
            f"LightGBM ranker: best iteration {ranking.get('best_iteration')}, "
            f"{ranking.get('fit_rows', 0):,} training rows, trained in "
            f"{ranking.get('training_s', 0):.1f} s"
        )
    return lines


def evaluated_users_line(report: dict[str, Any]) -> str:
    """ "N evaluated users", naming the window's count when they are a seeded sample of it."""
    evaluated, window = report.get("evaluated_users"), report.get("window_users")
    if evaluated is not None and window is not None and window > evaluated:
        return f"{evaluated} evaluated users (a seeded sample of the window's {window})"
    return f"{evaluated} evaluated users"


def summary_markdown(report: dict[str, Any]) -> str:
    """The run's readable summary: headline metrics with intervals, baselines, segments,
    exposure fairness, and what was registered."""
    metrics, baselines = report["metrics"], report["baselines"]
    recommender = recommender_line(report.get("recommender") or {})
    ks = sorted({int(key.split("@")[1]) for key in metrics if key.startswith("recall@")})
    fairness_k = 20 if 20 in ks else (ks[-1] if ks else 20)
    lines = [
        f"# rewear retrain `{report['dataset']}` — run `{report['run_id']}`",
        "",
        f"Snapshot `{report.get('snapshot_id')}` · protocol **{report['protocol']}** · "
        f"{evaluated_users_line(report)} · model `{recommender}`. "
        "Δ columns: model − baseline, paired bootstrap over users, 95% interval "
        "(n.s. = the interval contains 0).",
        "",
        "## The chain",
        *(f"- {line}" for line in chain_lines(report)),
        "",
        "## Accuracy on the test window (full ranking)",
        markdown_table(summary_rows(metrics, baselines, report.get("comparisons"))),
        "",
        "## Segments",
    ]
    for segment, content in (report.get("segments") or {}).items():
        segment_metrics = content.get("model", {})
        segment_baselines = {
            name: values
            for name, values in content.items()
            if name not in ("model", "users") and isinstance(values, dict)
        }
        lines += [
            f"### {segment} ({content.get('users', 0)} users)",
            markdown_table(summary_rows(segment_metrics, segment_baselines)),
            "",
        ]
    lines += [
        f"## Exposure and diversity @{fairness_k}",
        markdown_table(fairness_rows(metrics, baselines, fairness_k)),
        "",
    ]
    comparison = report.get("champion_comparison")
    if comparison:
        lines.append(f"## Challenger vs champion (version {comparison['champion_version']})")
        if comparison.get("comparable"):
            rows = interval_rows({"champion": comparison["intervals"]})
            lines += [
                f"{comparison['evaluated_users']} users, interactions from "
                f"{comparison.get('window_start', 'the test file')}: data neither model saw.",
                "",
                markdown_table(rows),
                "",
            ]
        else:
            lines += [f"Not comparable: {comparison['reason']}.", ""]
    model = report.get("model")
    if model:
        lines.append(
            f"Registered `{model['name']}` version {model['version']} with aliases "
            f"{model['aliases']}; promoted to champion: {report.get('promoted')}."
        )
    return "\n".join(lines)
