"""Figures of an evaluation (matplotlib, Agg backend): metric@K curves, Lorenz curves of
item and seller exposure, and per-segment bars, each for the model and every baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.evaluation.beyond_accuracy import lorenz_curve
from components.evaluation.suite import EvaluationSuite, ModelEvaluation

FIGURE_FILES = ("metric_at_k.png", "exposure_lorenz.png", "segments.png")


def render_figures(suite: EvaluationSuite, folder: Path) -> list[Path]:
    """Write the three PNG figures into `folder` and return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results = [suite.model, *suite.baselines.values()]
    paths = [
        _metric_curves(plt, results, folder / FIGURE_FILES[0]),
        _lorenz(plt, results, folder / FIGURE_FILES[1]),
        _segments(plt, suite, folder / FIGURE_FILES[2]),
    ]
    return paths


def _style(result: ModelEvaluation) -> dict[str, object]:
    return {"linewidth": 2.5} if result.name == "model" else {"linewidth": 1.2, "linestyle": "--"}


def _metric_curves(plt, results: list[ModelEvaluation], path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("recall", "ndcg"), strict=True):
        for result in results:
            ks = sorted(result.curves[metric])
            axis.plot(
                ks,
                [result.curves[metric][k] for k in ks],
                marker="o",
                label=result.name,
                **_style(result),
            )
        axis.set_xscale("log")
        axis.set_xlabel("K")
        axis.set_title(f"{metric}@K (test window, full ranking)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    return _save(plt, figure, path)


def _lorenz(plt, results: list[ModelEvaluation], path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, attribute, title in (
        (axes[0], "item_exposure", "items"),
        (axes[1], "seller_exposure", "sellers"),
    ):
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="equal exposure")
        for result in results:
            exposure = getattr(result, attribute)
            if exposure is None or not np.asarray(exposure).sum():
                continue
            x, y = lorenz_curve(np.asarray(exposure))
            axis.plot(x, y, label=result.name, **_style(result))
        axis.set_title(f"Lorenz curve of exposure over {title}")
        axis.set_xlabel(f"share of {title} (least exposed first)")
        axis.set_ylabel("share of list slots")
        axis.grid(alpha=0.3)
    axes[0].legend()
    return _save(plt, figure, path)


def _segments(plt, suite: EvaluationSuite, path: Path) -> Path:
    results = [suite.model, *suite.baselines.values()]
    metric = _segment_metric(suite.model)
    groups = ["all users", *suite.model.segments]
    width = 0.8 / len(results)
    figure, axis = plt.subplots(figsize=(8, 4))
    for offset, result in enumerate(results):
        values = [result.metrics.get(metric, 0.0)] + [
            result.segments.get(segment, {}).get(metric, 0.0) for segment in groups[1:]
        ]
        positions = np.arange(len(groups)) + offset * width
        axis.bar(positions, values, width=width, label=result.name)
    labels = [
        groups[0] + f"\n(n={suite.n_users})",
        *[f"{g}\n(n={suite.segment_sizes.get(g, 0)})" for g in groups[1:]],
    ]
    axis.set_xticks(np.arange(len(groups)) + width * (len(results) - 1) / 2, labels)
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} by segment")
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    return _save(plt, figure, path)


def _segment_metric(result: ModelEvaluation) -> str:
    for candidate in ("ndcg@20", "ndcg@10"):
        if candidate in result.metrics:
            return candidate
    return next(key for key in result.metrics if key.startswith("ndcg@"))


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
