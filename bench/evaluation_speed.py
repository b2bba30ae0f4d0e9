"""Evaluation speed: one full-ranking evaluation and one `evaluate_models`, timed.

    .venv/bin/python bench/evaluation_speed.py                  # gowalla and ml-1m-lcfn
    .venv/bin/python bench/evaluation_speed.py --only gowalla --repeat 3
    .venv/bin/python bench/evaluation_speed.py --only gowalla --profile /tmp/eval.prof

The split is built as the retrain flow builds it (`chain.data_phase`, into
`--cache/<config name>-<hash of the source>`, reused when there). Timed, `--repeat` times
(best and median printed: the machine is shared): `evaluate_scorer` of recent popularity
over every test user (the popularity line of bench/quality.py: massive score ties), and
`evaluate_models` of a model (popularity again, named `model`) beside the configured
baselines (fitted once, untimed), with the configured bootstrap resamples. Also printed:
users x items and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import cProfile
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.split_cache import cached_split  # noqa: E402
from components.evaluation.baselines import fit_baselines  # noqa: E402
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer  # noqa: E402
from components.evaluation.suite import evaluate_models  # noqa: E402
from components.retrieval.popularity import RecentPopularity  # noqa: E402

DATASETS = {"gowalla": "configs/gowalla.yaml", "ml-1m-lcfn": "configs/ml-1m-lcfn.yaml"}


def timed(function: Callable[[], object], repeat: int) -> str:
    """Best and median wall seconds of `repeat` calls, and the best process CPU seconds (the
    machine may be shared: CPU time is what the call itself needed)."""
    wall, cpu = [], []
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return (
        f"wall best {min(wall):6.2f} s  median {statistics.median(wall):6.2f} s  "
        f"(CPU best {min(cpu):6.2f} s)"
    )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench(name: str, cache: Path, repeat: int, profile: str | None) -> None:
    config, split = cached_split(REPO / DATASETS[name], None, cache)
    evaluation = config.evaluation
    history = split.history("test")
    task = build_evaluation_task(split, "test", evaluation)
    popularity = RecentPopularity.fit(history, evaluation.baselines.popularity, split.test_cutoff)
    started = time.perf_counter()
    baselines = fit_baselines(history, evaluation.baselines, split.test_cutoff)
    fitted = time.perf_counter() - started
    scorers = {"model": popularity, **baselines}
    print(
        f"{name}: {task.n_users:,} users x {len(task.item_ids):,} items; baselines "
        f"{', '.join(baselines)} fitted in {fitted:.1f} s (untimed); "
        f"{evaluation.bootstrap_resamples} bootstrap resamples"
    )

    def one_ranking() -> None:
        evaluate_scorer(popularity, task, evaluation.ks)

    def suite() -> None:
        evaluate_models("model", scorers, split, "test", evaluation)

    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one_ranking()
        suite()
        profiler.disable()
        profiler.dump_stats(profile)
        print(f"  profile of one ranking + one suite -> {profile}")
    print(f"  full-ranking evaluation (popularity): {timed(one_ranking, repeat)}")
    print(f"  evaluate_models ({len(scorers)} scorers): {timed(suite, repeat)}")
    print(f"  peak RSS so far {peak_rss_gib():.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(DATASETS), action="append")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", default="/tmp/rewear-evaluation-speed")
    parser.add_argument("--profile", help="cProfile one ranking + one suite into this file")
    args = parser.parse_args()
    for name in args.only or list(DATASETS):
        profile = None if args.profile is None else f"{args.profile}.{name}"
        bench(name, Path(args.cache), args.repeat, profile)


if __name__ == "__main__":
    main()
