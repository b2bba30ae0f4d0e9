"""Two-tower encoder training speed: what `retrain`'s train_encoder task trains, timed.

    .venv/bin/python bench/encoder_speed.py                       # configs/synthetic.yaml
    .venv/bin/python bench/encoder_speed.py configs/gowalla.yaml \\
        --set source.path=../../shared/data/gowalla/tune --set source.test_file=valid.txt
    .venv/bin/python bench/encoder_speed.py --set model.two_tower.batch_size=2048 \\
        --profile /tmp/enc.prof
    .venv/bin/python bench/encoder_speed.py --set model.two_tower.processes=2 --test-recall
        # data-parallel in 2 gloo processes (cpus // 2 threads each; --threads is the
        # parent's); "ranks CPU" is what the spawned ranks used

The split is built as the retrain flow builds it (components.pipeline.steps: ingest -> validate ->
snapshot -> split, into `--cache/<config name>-<hash of the overrides>`, reused when
there), then `retrieval_steps.train_label_stage_encoders` runs, as the train_encoder task
calls it: temporal, the fit on the train window early-stopped on the valid window, then
the refit on train + valid; fixed split, the fit on what the ranker's holdout keeps of the
train file early-stopped on the held-out part, then the refit on the whole train file (the
test file is never read). Printed: one line per epoch (phase, examples/s of the training
pass, train and total seconds, the early-stopping recall@K), the epoch early stopping
chose, and the total wall seconds.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402

from bench.split_cache import cached_split  # noqa: E402
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer  # noqa: E402
from components.pipeline.retrieval_steps import train_label_stage_encoders  # noqa: E402
from components.retrieval.two_tower import TwoTowerScorer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", nargs="?", default=str(REPO / "configs" / "synthetic.yaml"))
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="/tmp/rewear-encoder-speed")
    parser.add_argument("--profile", help="write a cProfile of the training to this file")
    parser.add_argument("--log", action="store_true", help="INFO logging of the trainer")
    parser.add_argument(
        "--test-recall", action="store_true", help="also the served model's test recall@K"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    overrides = {key: yaml.safe_load(value) for key, value in (i.split("=", 1) for i in args.set)}
    config, split = cached_split(Path(args.config), overrides, Path(args.cache))
    tower = config.model.two_tower
    print(
        f"{config.name}: {split.protocol} split, {len(split.history('valid')):,} fit rows, "
        f"{len(split.history('test')):,} refit rows, {len(split.tables.items):,} items; "
        f"threads {torch.get_num_threads()}"
    )
    print("two_tower:", json.dumps(tower.model_dump(mode="json"), sort_keys=True))

    profiler = cProfile.Profile() if args.profile else None
    started, cpu = time.perf_counter(), time.process_time()
    ranks_cpu = _children_cpu()
    if profiler is not None:
        profiler.enable()
    fitted, trained = train_label_stage_encoders(
        split, config.model.two_tower, config.model.ranker.label_holdout, config.evaluation
    )
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    total, cpu = time.perf_counter() - started, time.process_time() - cpu
    ranks_cpu = _children_cpu() - ranks_cpu

    key = f"valid_recall@{tower.early_stopping_k}"
    best = None
    for record in trained.epochs:
        rate = record["examples"] / max(record["train_s"], 1e-9)
        recall = record.get(key)
        shown = "" if recall is None else f"  {key} {recall:.4f}"
        print(
            f"  {record['phase']:5s} epoch {record['epoch']:2d}: {rate:9,.0f} examples/s  "
            f"train {record['train_s']:6.1f} s  total {record['total_s']:6.1f} s  "
            f"loss {record['loss']:.4f}{shown}"
        )
        if recall is not None and (best is None or recall > best[1]):
            best = (record["epoch"], recall)
    fit = [r for r in trained.epochs if r["phase"] == "fit"]
    refit = [r for r in trained.epochs if r["phase"] == "refit"]
    if best is not None:
        to_best = sum(r["total_s"] for r in fit if r["epoch"] <= best[0])
        print(
            f"early stopping chose epoch {best[0]} ({key} {best[1]:.4f}), reached after "
            f"{to_best:.1f} s of fit epochs"
        )
    print(
        f"fit epochs {len(fit)}, refit epochs {len(refit)}; "
        f"train_two_tower_stages wall {total:.1f} s (process CPU {cpu:.1f} s, "
        f"ranks CPU {ranks_cpu:.1f} s)"
    )
    if args.test_recall:
        task = build_evaluation_task(split, "test", config.evaluation)
        k = tower.early_stopping_k
        for name, model in (("fitted on the train window", fitted), ("served", trained)):
            scorer = TwoTowerScorer(
                model, split.tables.items, split.history("test"), split.test_cutoff
            )
            recall = evaluate_scorer(scorer, task, (k,)).metrics[f"recall@{k}"]
            print(f"test recall@{k} of the model {name}: {recall:.4f}")


def _children_cpu() -> float:
    """CPU seconds of the finished child processes (the data-parallel ranks): on a busy
    machine, work done is easier to compare than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
