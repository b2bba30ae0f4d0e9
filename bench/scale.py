"""Scale benchmark: the whole retrain (the shipped synthetic config, two-tower included) on
synthetic marketplaces of growing size; per stage wall time and peak RSS, and how each
stage's time grows with the number of events (the exponent b of time ~ events^b between two
sizes, log-log). Issue 15 asks for no exponent above 1.2.

    .venv/bin/python bench/scale.py                         # 4k, 20k, 90k users
    .venv/bin/python bench/scale.py --users 4000 --users 20000 --out /tmp/scale
    .venv/bin/python bench/scale.py --reuse --out /tmp/scale  # re-aggregate kept sizes

About 107 events per user (4k users: 0.43M events, 20k: 2.3M, 90k: about 10M); supply
(sellers, listings) scales with the users. Each size runs in its own process, so a peak RSS
is that size's alone and a size that fails or runs out of time loses no other. Writes
`scale.json`, `scale.md` and `scale.png` (time and peak RSS per stage against events) to
`--out`. Nothing is registered: the chain stops after evaluation, as in bench/quality.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import load_config  # noqa: E402
from components.pipeline import chain  # noqa: E402

DEFAULT_USERS = (4_000, 20_000, 90_000)
#: Stages shorter than this at either size get no exponent (timer noise dominates).
MIN_STAGE_S = 1.0


class PeakSampler:
    """Highest resident memory of this process while a stage runs (a thread reading
    /proc/self/statm every 0.2 s; ru_maxrss only ever grows, so it cannot tell stages
    apart)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._running = False

    def __enter__(self) -> PeakSampler:
        self.peak_mb = current_rss_mb()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())

    def _sample(self) -> None:
        while self._running:
            self.peak_mb = max(self.peak_mb, current_rss_mb())
            time.sleep(0.2)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_size(n_users: int, scratch: Path) -> dict[str, Any]:
    """The chain up to evaluation on a synthetic market of `n_users` users."""
    config = load_config(REPO / "configs" / "synthetic.yaml", {"source.n_users": n_users})
    stage_peaks: dict[str, float] = {}

    def measured(stage: str, step: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            with PeakSampler() as sampler:
                result = step(*args, **kwargs)
            # A per-user stage runs as <stage>.plan, .shard (one per shard), .combine:
            # its peak is the highest of them.
            name = stage.split(".")[0]
            stage_peaks[name] = round(max(stage_peaks.get(name, 0.0), sampler.peak_mb), 1)
            print(
                f"{n_users} users: {stage} {time.perf_counter() - started:.1f} s "
                f"(peak RSS {sampler.peak_mb:.0f} MB)",
                flush=True,
            )
            return result

        return call

    stages = chain.Stages(wrap=measured)
    started = time.perf_counter()
    data = chain.data_phase(config, scratch / "run", scratch / "snapshots", stages)
    retrieval = chain.retrieval_phase(config, data.split_uri, scratch / "run", stages)
    ranking = chain.ranking_phase(config, data.split_uri, retrieval, scratch / "run", stages)
    evaluation = chain.evaluation_phase(
        config, data.split_uri, retrieval, ranking, scratch / "run", stages
    )
    rows = data.split["rows"]
    encoder = retrieval.encoder or {}
    return {
        "n_users": n_users,
        "events": int(sum(rows.values())),
        "live_listings": (retrieval.indexes or {}).get("figures", {}).get("evaluation_items"),
        "evaluated_users": evaluation["evaluated_users"],
        "window_users": evaluation.get("window_users"),
        "encoder_epochs": len(encoder.get("epochs", [])),
        "candidate_recall": retrieval.candidates.get("candidate_recall"),
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "stage_s": stages.timings_s,
        "stage_peak_rss_mb": stage_peaks,
        "ndcg@10": evaluation["metrics"].get("ndcg@10"),
    }


def exponents(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per consecutive pair of sizes and per stage: log(t2 / t1) / log(events2 / events1)."""
    out = []
    ordered = sorted(results, key=lambda r: r["events"])
    for small, large in itertools.pairwise(ordered):
        ratio = math.log(large["events"] / small["events"])
        per_stage = {}
        for stage, seconds in small["stage_s"].items():
            other = large["stage_s"].get(stage)
            if other is None or min(seconds, other) < MIN_STAGE_S:
                continue
            per_stage[stage] = round(math.log(other / seconds) / ratio, 2)
        whole = round(math.log(large["wall_s"] / small["wall_s"]) / ratio, 2)
        out.append(
            {
                "from_events": small["events"],
                "to_events": large["events"],
                "stages": per_stage,
                "whole": whole,
            }
        )
    return out


def render(results: list[dict[str, Any]], growth: list[dict[str, Any]]) -> str:
    ordered = sorted(results, key=lambda r: r["events"])
    stages = list(ordered[0]["stage_s"]) if ordered else []
    header = "| stage | " + " | ".join(f"{r['events']:,} events" for r in ordered) + " |"
    lines = [
        "# Retrain at scale (bench/scale.py)",
        "",
        "Wall time in s, peak RSS in MB during the stage.",
        "",
        header,
        "|---|" + "---|" * len(ordered),
    ]
    for stage in stages:
        cells = [
            f"{r['stage_s'].get(stage, float('nan')):.1f} s, "
            f"{r['stage_peak_rss_mb'].get(stage, float('nan')):.0f} MB"
            for r in ordered
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append(
        "| **whole** | "
        + " | ".join(f"{r['wall_s']:.0f} s, {r['peak_rss_mb']:.0f} MB" for r in ordered)
        + " |"
    )
    lines += ["", "Growth exponents (time ~ events^b):", ""]
    for pair in growth:
        worst = sorted(pair["stages"].items(), key=lambda kv: -kv[1])
        listed = ", ".join(f"{stage} {b:.2f}" for stage, b in worst)
        lines.append(
            f"- {pair['from_events']:,} -> {pair['to_events']:,} events: whole "
            f"{pair['whole']:.2f}; {listed}"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(results, key=lambda r: r["events"])
    events = [r["events"] for r in ordered]
    figure, (times, memory) = plt.subplots(1, 2, figsize=(13, 5))
    for stage in ordered[0]["stage_s"]:
        seconds = [r["stage_s"].get(stage, float("nan")) for r in ordered]
        if max(seconds) < MIN_STAGE_S:
            continue
        times.plot(events, seconds, marker="o", label=stage)
        memory.plot(
            events,
            [r["stage_peak_rss_mb"].get(stage, float("nan")) / 1024 for r in ordered],
            marker="o",
            label=stage,
        )
    times.plot(events, [r["wall_s"] for r in ordered], "k--", marker="s", label="whole")
    times.set(xscale="log", yscale="log", xlabel="events", ylabel="wall time (s)")
    memory.set(xscale="log", xlabel="events", ylabel="peak RSS during stage (GiB)")
    times.legend(fontsize=7)
    times.grid(True, which="both", alpha=0.3)
    memory.grid(True, alpha=0.3)
    figure.suptitle("rewear retrain, shipped synthetic config, 2 cores")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, action="append", help="users per size (repeat)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rewear-scale")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read a size's result from --out when its size-N.json is there (re-measure one "
        "size, e.g. after a noisy run, without running the others again)",
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:  # a child: one size, its result as JSON
        with tempfile.TemporaryDirectory(prefix="rewear-scale-") as scratch:
            os.environ.setdefault("REWEAR_HOME", str(Path(scratch) / "home"))
            result = run_size(args.one, Path(scratch))
        args.result.write_text(json.dumps(result, indent=2))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for n_users in args.users or DEFAULT_USERS:
        target = args.out / f"size-{n_users}.json"
        if args.reuse and target.is_file():
            print(f"== {n_users} users: reusing {target}", flush=True)
            results.append(json.loads(target.read_text()))
            continue
        command = [sys.executable, __file__, "--one", str(n_users), "--result", str(target)]
        print(f"== {n_users} users", flush=True)
        if subprocess.run(command, check=False).returncode != 0 or not target.is_file():
            print(f"{n_users} users: failed, left out", flush=True)
            continue
        results.append(json.loads(target.read_text()))
    growth = exponents(results)
    (args.out / "scale.json").write_text(json.dumps({"sizes": results, "growth": growth}, indent=2))
    text = render(results, growth)
    (args.out / "scale.md").write_text(text)
    if results:
        plot(results, args.out / "scale.png")
    print(text)


if __name__ == "__main__":
    main()
