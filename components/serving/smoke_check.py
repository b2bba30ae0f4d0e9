"""Load a registered model in this (fresh) process and time smoke requests against it.

Run as a script by `components.registry.promotion_smoke.smoke_in_fresh_process` (with `python -P`,
so this folder's modules do not shadow anything): a new interpreter with nothing loaded,
which fetches the version from the registry and loads it as `mlflow models serve` would.
Reads a JSON job on stdin, prints one JSON line. Imports only MLflow and pandas itself.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def run(job: dict[str, Any]) -> dict[str, Any]:
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(job["tracking_uri"])
    mlflow.set_registry_uri(job["tracking_uri"])
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(job["model_uri"])
    load_s = time.perf_counter() - started
    k = int(job["k"])
    problems: list[str] = []
    # One untimed pass checks every answer and warms lazy state (as a server's first
    # requests would); the timed requests follow.
    started = time.perf_counter()
    for row in job["requests"]:
        problems += _check(row, model.predict(pd.DataFrame([row]), params={"k": k}), k)
    first_pass_ms = (time.perf_counter() - started) * 1000
    latencies_ms: list[float] = []
    for attempt in range(int(job["n_requests"])):
        row = job["requests"][attempt % len(job["requests"])]
        started = time.perf_counter()
        model.predict(pd.DataFrame([row]), params={"k": k})
        latencies_ms.append((time.perf_counter() - started) * 1000)
    latencies_ms.sort()
    return {
        "ok": not problems,
        "problems": problems,
        "load_s": load_s,
        "first_pass_ms": first_pass_ms,
        "requests": len(latencies_ms),
        "p50_ms": latencies_ms[len(latencies_ms) // 2],
        "p99_ms": latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))],
    }


def _check(row: dict[str, Any], answer: Any, k: int) -> list[str]:
    if len(answer) == 0:
        return [f"{row}: empty answer"]
    problems = []
    if len(answer) > k:
        problems.append(f"{row}: {len(answer)} rows for k={k}")
    if list(answer["rank"]) != list(range(1, len(answer) + 1)):
        problems.append(f"{row}: ranks are not 1..{len(answer)}")
    if answer["item_id"].duplicated().any():
        problems.append(f"{row}: an item is recommended twice")
    if answer["score"].isna().any():
        problems.append(f"{row}: a score is missing")
    return problems


def main() -> None:
    job = json.loads(sys.stdin.read())
    try:
        result = run(job)
    except Exception as error:  # reported to the gate, which refuses the version
        result = {"ok": False, "problems": [f"{type(error).__name__}: {error}"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
