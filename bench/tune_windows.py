"""Tune the ranker on windows before the test window, without ever reading the test window.

    .venv/bin/python bench/tune_windows.py --config configs/movielens-100k.yaml
    .venv/bin/python bench/tune_windows.py --config configs/movielens-100k.yaml \\
        --set model.ranker.ensemble_size=1 --set model.ranker.seed=3 --windows 2
    .venv/bin/python bench/tune_windows.py --config configs/ml-1m-lcfn.yaml --windows 1

In the temporal protocol the ranker learns from the valid window (and the label windows
before it), so scoring a setting on the valid window would score it on its own labels.
This script drops the test window and everything after it, then for w = 1..`--windows`
treats the w-th window before the real test window (same length; w = 1 is the real valid
window) as a test window: the window before it becomes the valid window and everything
earlier the training history. A fixed split has one such window: its valid file, scored
against models fitted on the train file (the ranker's labels are a holdout of the train
file, so the valid file is unseen). It runs the flow's own steps on that split (ranking
data, ranker, the two-stage model at the cut-off) and prints re-ranked vs retrieval-only
metrics with the paired bootstrap interval over users, and the evaluation's popularity
baseline; with the two-tower among the sources it trains the encoder and builds the index
on that split too. Configs with the ranker on only; nothing is registered.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from components.config import PipelineConfig, load_config  # noqa: E402
from components.data.split import DataSplit, read_split, write_split  # noqa: E402
from components.evaluation.suite import evaluate_models  # noqa: E402
from components.pipeline import chain  # noqa: E402
from components.ranking.model import TwoStageModel, retrieval_only  # noqa: E402
from components.retrieval.popularity import RecentPopularity  # noqa: E402

METRICS = ("ndcg@10", "recall@20", "ndcg@20")


def score_window(data: DataSplit, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Ranking data, ranker and the two-stage model on `data`; metrics on its test window."""
    write_split(data, run_dir / "split")
    split_uri = str(run_dir / "split")
    stages = chain.Stages()
    retrieval = chain.retrieval_phase(config, split_uri, run_dir, stages)
    ranking = chain.ranking_phase(config, split_uri, retrieval, run_dir, stages)
    assert ranking.ranker is not None  # main() refuses a config without the ranker
    encoder_epochs = "no two-tower"
    if retrieval.encoder is not None:
        encoder_epochs = ", ".join(
            f"{r['phase']} {r['epoch']}"
            + "".join(f" {k} {v:.4f}" for k, v in r.items() if k.startswith("valid_recall"))
            for r in retrieval.encoder["epochs"]
        )
    model = TwoStageModel.load(Path(ranking.evaluated["uri"]))
    written = read_split(Path(split_uri))
    popularity = RecentPopularity.fit(
        written.history("test"), config.evaluation.baselines.popularity, written.test_cutoff
    )
    scorers = {
        "model": model,
        "retrieval_only": retrieval_only(model),
        "popularity": popularity,
    }
    suite = evaluate_models("model", scorers, written, "test", config.evaluation)
    return {
        "users": suite.n_users,
        "model": suite.model.metrics,
        "retrieval_only": suite.baselines["retrieval_only"].metrics,
        "popularity": suite.baselines["popularity"].metrics,
        "delta": suite.comparisons["retrieval_only"],
        "best_iterations": ranking.ranker["figures"]["member_best_iterations"],
        "encoder_epochs": encoder_epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--windows", type=int, default=2)
    args = parser.parse_args()
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    config = load_config(args.config, overrides)
    if not config.model.ranker.enabled:
        raise SystemExit("tune_windows tunes the ranker: use a config with model.ranker.enabled")
    if config.split.protocol == "fixed" and args.windows != 1:
        raise SystemExit("a fixed split has one window to tune on (its valid file): --windows 1")
    with tempfile.TemporaryDirectory(prefix="rewear-tune-") as scratch:
        root = Path(scratch)
        data = chain.data_phase(config, root, root / "snapshots", chain.Stages())
        real = read_split(Path(data.split_uri))
        label = f"{config.name} {overrides}" if overrides else config.name
        start = "file" if real.protocol == "fixed" else f"window starts at {real.test_cutoff}"
        print(f"{label}: the real test {start} (never read)")
        for back in range(1, args.windows + 1):
            started = time.perf_counter()
            data = real.windows_back(back)
            result = score_window(data, config, root / f"window-{back}")
            delta = result["delta"]
            end = data.tables.interactions["ts"].max()
            span = "the valid file" if data.protocol == "fixed" else f"{data.test_cutoff} to {end}"
            print(
                f"window -{back}: test {span}, {result['users']} users, "
                f"best iterations {result['best_iterations']}, "
                f"{time.perf_counter() - started:.0f} s"
            )
            print(f"  encoder epochs: {result['encoder_epochs']}")
            for metric in METRICS:
                d = delta[metric]
                print(
                    f"  {metric:<10} model {result['model'][metric]:.4f}  retrieval_only "
                    f"{result['retrieval_only'][metric]:.4f}  Δ {d['difference']:+.4f} "
                    f"[{d['low']:+.4f}, {d['high']:+.4f}]  popularity baseline "
                    f"{result['popularity'][metric]:.4f}"
                )


if __name__ == "__main__":
    main()
