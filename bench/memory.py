"""Peak memory of a whole `rewear retrain` on a fixed split: the process tree's resident
memory (the flow, its encoder and ranker worker processes, the temporary Prefect server),
sampled every 0.2 s, and the largest single process.

    .venv/bin/python bench/memory.py                    # gowalla sample, configs/gowalla.yaml
    .venv/bin/python bench/memory.py --interactions 200000 --items 12000 --seed 0

The market is built by sampling users of gowalla's tune split (never its test file): users
in a seeded random order until about `--interactions` training interactions remain once only
the `--items` listings most interacted with among the sampled users are kept; each sampled
user's valid.txt line is their test line, on the same listings. The retrain runs with its
own REWEAR_HOME under `$REWEAR_HOME/bench/memory`, so the user's registry is untouched.
Prints the peak of the tree, the largest process and what was running at the peak.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.settings import RewearSettings  # noqa: E402

TUNE = REPO.parent / "shared" / "data" / "gowalla" / "tune"
PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def read_lines(path: Path) -> dict[str, list[str]]:
    """`user item item ...` lines as user -> items."""
    lines = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts:
            lines[parts[0]] = parts[1:]
    return lines


def sample_market(
    tune: Path, out: Path, interactions: int, items: int, seed: int
) -> dict[str, int]:
    """Write out/train.txt and out/test.txt sampled from the tune split; their sizes."""
    train, valid = read_lines(tune / "train.txt"), read_lines(tune / "valid.txt")
    users = sorted(train)
    random.Random(seed).shuffle(users)
    kept_per_user = sum(len(v) for v in train.values()) / max(len(train), 1)
    count = min(len(users), int(interactions / kept_per_user))
    for _ in range(6):  # a few corrections: the kept listings depend on the users taken
        chosen = users[:count]
        frequency = Counter(item for user in chosen for item in train[user])
        listings = {item for item, _ in frequency.most_common(items)}
        kept = sum(sum(item in listings for item in train[user]) for user in chosen)
        if abs(kept - interactions) < 0.02 * interactions or count == len(users):
            break
        count = min(len(users), max(1, round(count * interactions / max(kept, 1))))
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"users": 0, "train_interactions": 0, "test_interactions": 0, "items": len(listings)}
    with (out / "train.txt").open("w") as train_file, (out / "test.txt").open("w") as test_file:
        for user in chosen:
            seen = [item for item in train[user] if item in listings]
            if not seen:
                continue
            held = [item for item in valid.get(user, []) if item in listings]
            train_file.write(" ".join([user, *seen]) + "\n")
            test_file.write(" ".join([user, *held]) + "\n")
            sizes["users"] += 1
            sizes["train_interactions"] += len(seen)
            sizes["test_interactions"] += len(held)
    return sizes


def tree_rss_mb(root: int) -> tuple[float, float, list[str]]:
    """(sum over `root` and its descendants, largest one, their command names) in MB."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
        names[int(entry)] = name
    total, largest, running = 0.0, 0.0, []
    stack = [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_MB
        except (OSError, IndexError, ValueError):
            continue
        total += rss
        largest = max(largest, rss)
        running.append(f"{names.get(pid, '?')}:{rss:.0f}")
    return total, largest, running


def run_measured(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run `command`, sampling its process tree; peak figures and the exit code."""
    peak: dict[str, Any] = {"tree_mb": 0.0, "largest_mb": 0.0, "at_s": 0.0, "running": []}
    timeline: list[tuple[float, float]] = []  # (seconds since midnight, tree MB)
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                total, largest, running = tree_rss_mb(process.pid)
                now = time.localtime()
                timeline.append((now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec, total))
                if total > peak["tree_mb"]:
                    peak.update(
                        tree_mb=total,
                        at_s=time.perf_counter() - started,
                        at=time.strftime("%H:%M:%S"),
                        running=running,
                    )
                peak["largest_mb"] = max(peak["largest_mb"], largest)
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
    return {
        **peak,
        "wall_s": time.perf_counter() - started,
        "returncode": code,
        "stage_peak_mb": stage_peaks(log.read_text(errors="replace"), timeline),
    }


#: A Prefect task's end in the console log: "HH:MM:SS.fff | INFO | Task run 'stage-abc' - Finished".
TASK_END = re.compile(
    r"^(\d\d):(\d\d):(\d\d)\.\d+ \| \w+ +\| Task run '(.+)-[0-9a-f]{3}' - Finished"
)


def stage_peaks(log: str, timeline: list[tuple[float, float]]) -> dict[str, float]:
    """Highest tree RSS (MB) between each stage's end and the previous one's, by stage."""
    peaks: dict[str, float] = {}
    previous = timeline[0][0] if timeline else 0.0
    for line in log.splitlines():
        found = TASK_END.match(line)
        if found is None:
            continue
        hours, minutes, seconds, stage = found.groups()
        end = int(hours) * 3600 + int(minutes) * 60 + int(seconds) + 1
        during = [mb for at, mb in timeline if previous <= at <= end]
        name = stage.split(".")[0]
        peaks[name] = round(max([peaks.get(name, 0.0), *during]), 1)
        previous = end - 1
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "gowalla.yaml")
    parser.add_argument("--tune", type=Path, default=TUNE, help="gowalla's tune split folder")
    parser.add_argument("--interactions", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not (args.tune / "train.txt").is_file():
        sys.exit(f"{args.tune} has no train.txt: pass --tune with gowalla's tune split folder")

    home = RewearSettings().home.resolve() / "bench" / "memory"
    market = home / f"gowalla-{args.interactions}-{args.items}-{args.seed}"
    sizes = sample_market(args.tune, market, args.interactions, args.items, args.seed)
    print(f"sampled market {market}: {json.dumps(sizes)}", flush=True)
    command = [
        str(Path(sys.executable).with_name("rewear")),
        "retrain",
        "--config",
        str(args.config),
        "--set",
        f"source.path={market}",
        *[part for item in args.overrides for part in ("--set", item)],
    ]
    env = {**os.environ, "REWEAR_HOME": str(home / "home")}
    log = home / "retrain.log"
    result = run_measured(command, env, log)
    result |= {"market": sizes, "config": str(args.config), "load_average": os.getloadavg()}
    print(
        f"retrain exit {result['returncode']} in {result['wall_s']:.0f} s (log {log})\n"
        f"peak RSS of the process tree {result['tree_mb'] / 1024:.2f} GiB at "
        f"{result['at_s']:.0f} s ({result.get('at')}, see the log's stage lines);\n"
        f"largest single process {result['largest_mb'] / 1024:.2f} GiB\n"
        f"running at the peak (MB): {' '.join(result['running'])}\n"
        f"peak per stage (MB): {json.dumps(result['stage_peak_mb'])}\n"
        f"load average at the end: {result['load_average']}",
        flush=True,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
