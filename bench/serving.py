"""Serving latency: single-request p50 / p99 of the registered pyfunc, in-process and behind
`mlflow models serve`, for k = 20.

    .venv/bin/python bench/serving.py                     # ml-1m-lcfn, two-stage bundle
    .venv/bin/python bench/serving.py --model-uri models:/rewear@champion   # an existing one
    .venv/bin/python bench/serving.py --set model.ranker.enabled=false  # fusion, no ranker
    .venv/bin/python bench/serving.py --bundle .rewear/bench/serving/runs/<run>/bundle
    .venv/bin/python bench/serving.py --floor --workers 2   # a constant answer: the server's cost

Without `--model-uri` it builds the served bundle with the retrain flow's own steps (ingest,
validate, snapshot, split, fit, train_encoder and build_index for the two-tower source,
build_features, train_ranker, assemble_two_stage for serving, bundle; no evaluation) from
`configs/ml-1m-lcfn.yaml`, i.e. the model `rewear retrain` registers for that dataset, and
registers it in a registry of its own under `$REWEAR_HOME/bench/serving`, so the user's
registry and champion are untouched (`--bundle` registers an already built bundle folder
with the current code instead of training again). One request = one user (a known user
drawn at random from the bundle, or an anonymous session of 5 recent listings), sent one
after another, after a warm-up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from components.config import load_config  # noqa: E402
from components.pipeline import chain, publish_steps  # noqa: E402
from components.registry.registration import (  # noqa: E402
    git_commit,
    log_and_register,
    model_tags,
)
from components.registry.tracking import configure_mlflow  # noqa: E402
from components.serving.server import model_server  # noqa: E402
from components.settings import RewearSettings  # noqa: E402

K = 20
SESSION_LENGTH = 5


def build_and_register(config_path: Path, overrides: dict[str, Any], home: Path) -> str:
    """Train the bundle with the retrain's chain, register it in `home`; its models:/ URI."""
    config = load_config(config_path, overrides)
    settings = RewearSettings(home=home).ensure()
    client, experiment_id = configure_mlflow(settings, "bench-serving")
    run_id = client.create_run(experiment_id, run_name=f"bench-serving-{config.name}").info.run_id
    run_dir = settings.runs / run_id
    started = time.perf_counter()
    stages = chain.Stages()
    data = chain.data_phase(config, run_dir, settings.snapshots, stages)
    retrieval = chain.retrieval_phase(config, data.split_uri, run_dir, stages)
    ranking = chain.ranking_phase(config, data.split_uri, retrieval, run_dir, stages)
    snapshot_id = data.snapshot["snapshot_id"]
    built = publish_steps.bundle(
        data.split_uri,
        retrieval.fitted["final_model_uri"],
        config,
        run_dir,
        retrieval.encoder_uri,
        retrieval.serving_index_uri,
        two_stage_uri=ranking.served["uri"],
        snapshot_id=snapshot_id,
        **model_tags(config.model),
    )
    tags = {
        "snapshot_id": snapshot_id,
        "git_commit": git_commit(),
        "config_hash": "bench",
        "dataset": config.name,
    }
    registered = log_and_register(
        client, run_id, Path(built["uri"]), "rewear-bench", tags, built["example_user_id"]
    )
    client.set_terminated(run_id, "FINISHED")
    print(
        f"built and registered rewear-bench v{registered.version} ({config.model.summary()}) in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return f"models:/rewear-bench/{registered.version}"


def register_bundle(bundle: Path, home: Path) -> str:
    """Register an already built bundle folder (with the code as it is now)."""
    settings = RewearSettings(home=home).ensure()
    client, experiment_id = configure_mlflow(settings, "bench-serving")
    run_id = client.create_run(experiment_id, run_name="bench-serving-bundle").info.run_id
    metadata = json.loads((bundle / "bundle.json").read_text())
    tags = {
        "snapshot_id": str(metadata.get("snapshot_id")),
        "git_commit": git_commit(),
        "config_hash": "bench",
        "dataset": str(metadata.get("dataset")),
    }
    registered = log_and_register(client, run_id, bundle, "rewear-bench", tags)
    client.set_terminated(run_id, "FINISHED")
    return f"models:/rewear-bench/{registered.version}"


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {
        "requests": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max_ms": ordered[-1],
    }


def timed(call: Callable[[dict[str, Any]], object], rows: list[dict[str, Any]]) -> list[float]:
    latencies = []
    for row in rows:
        started = time.perf_counter()
        call(row)
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def request_rows(recommender: Any, n: int, seed: int) -> tuple[list[dict], list[dict]]:
    """`n` known-user rows and `n` anonymous-session rows, drawn at random."""
    rng = random.Random(seed)
    if recommender.two_stage is not None:  # the users the ranker answers
        users = sorted(str(user) for user in recommender.two_stage.features.users.index)
    elif recommender.retrieval is not None:
        users = sorted(recommender.retrieval.known_users)
    else:
        users = sorted(recommender.exclusions)
    on_sale = recommender.available
    available = [str(i) for i, ok in zip(recommender.item_ids, on_sale, strict=True) if ok]
    known = [{"user_id": rng.choice(users)} for _ in range(n)]
    sessions = [{"recent_item_ids": rng.sample(available, SESSION_LENGTH)} for _ in range(n)]
    return known, sessions


def bench_in_process(model: Any, rows: list[dict], warmup: int) -> dict[str, float]:
    def ask(row: dict[str, Any]) -> object:
        return model.predict(pd.DataFrame([row]), params={"k": K})

    timed(ask, rows[:warmup])
    return percentiles(timed(ask, rows[warmup:]))


def http_connection(base_url: str) -> http.client.HTTPConnection:
    address = urlparse(base_url)
    return http.client.HTTPConnection(address.hostname, address.port, timeout=60)


def http_ask(connection: http.client.HTTPConnection) -> Callable[[dict[str, Any]], object]:
    """A single-request caller on `connection` (kept alive between requests)."""
    headers = {"Content-Type": "application/json"}

    def ask(row: dict[str, Any]) -> object:
        body = json.dumps({"dataframe_records": [row], "params": {"k": K}})
        connection.request("POST", "/invocations", body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
        return payload

    return ask


def bench_http(base_url: str, rows: list[dict], warmup: int) -> dict[str, float]:
    connection = http_connection(base_url)
    ask = http_ask(connection)
    try:
        timed(ask, rows[:warmup])
        return percentiles(timed(ask, rows[warmup:]))
    finally:
        connection.close()


def bench_clients(
    make_ask: Callable[[], Callable[[dict[str, Any]], object]],
    rows: list[dict[str, Any]],
    clients: int,
    warmup: int,
) -> dict[str, float]:
    """`clients` threads, each with its own `make_ask()` (its own connection), sending its
    share of `rows` back to back: throughput over the whole run, latency percentiles over
    every request, and the failed ones."""
    shares = [rows[start::clients] for start in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)

    def client(number: int) -> None:
        ask = make_ask()
        for row in shares[number][: warmup // clients]:
            ask(row)
        barrier.wait()
        for row in shares[number][warmup // clients :]:
            started = time.perf_counter()
            try:
                ask(row)
            except Exception:
                errors[number] += 1
            latencies[number].append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = [value for part in latencies for value in part]
    return {
        "clients": clients,
        **percentiles(every),
        "requests_per_s": len(every) / elapsed,
        "errors": sum(errors),
    }


def http_asker(base_url: str) -> Callable[[], Callable[[dict[str, Any]], object]]:
    """A factory of single-request callers, each on its own keep-alive connection."""
    return lambda: http_ask(http_connection(base_url))


class ConstantAnswer(mlflow.pyfunc.PythonModel):
    """The same 20 rows for every request: what MLflow's server and the clients cost alone."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        rows = K * len(model_input)
        return pd.DataFrame(
            {
                "user_id": ["u"] * rows,
                "rank": list(range(1, K + 1)) * len(model_input),
                "item_id": ["i"] * rows,
                "score": [0.5] * rows,
                "source": ["constant"] * rows,
                "request": [0] * rows,
            }
        )


def bench_server_floor(levels: list[int], requests: int, workers: int, warmup: int) -> None:
    """Serve `ConstantAnswer` under the served model's signature and load it like the model:
    the throughput and latency no model can beat on this machine."""
    from components.serving.pyfunc import model_signature

    settings = RewearSettings(home=RewearSettings().home / "bench" / "serving-floor").ensure()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    with mlflow.start_run():
        logged = mlflow.pyfunc.log_model(
            name="constant",
            python_model=ConstantAnswer(),
            signature=model_signature(),
            registered_model_name="rewear-floor",
        )
    uri = f"models:/rewear-floor/{logged.registered_model_version}"
    rows = [{"user_id": f"u{number}"} for number in range(requests + warmup)]
    log = settings.home / "server.log"
    with model_server(
        uri, settings.tracking_uri, log, workers=workers, threads=settings.serving_threads
    ) as base:
        print(f"{uri}: a constant 20-row answer, {workers} workers", flush=True)
        for clients in levels:
            row = bench_clients(http_asker(base), rows, clients, warmup)
            print(
                f"HTTP floor {clients:>3} clients: {row['requests_per_s']:.1f} req/s, p50 "
                f"{row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, errors {row['errors']}",
                flush=True,
            )
    print(f"load average at the end: {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "ml-1m-lcfn.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        help="config override key=value, e.g. model.ranker.enabled=false",
    )
    parser.add_argument("--model-uri", help="bench this registered model instead of training")
    parser.add_argument("--bundle", type=Path, help="register this bundle folder and bench it")
    parser.add_argument("--home", type=Path, help="REWEAR_HOME of --model-uri (default: env)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--http-requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--clients", default="1,4,16", help="concurrent clients per level, comma-separated"
    )
    parser.add_argument("--workers", type=int, default=2, help="model server worker processes")
    parser.add_argument(
        "--level-requests", type=int, default=2000, help="requests per concurrency level"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="bench a constant answer instead: what the server and clients cost alone",
    )
    args = parser.parse_args()
    levels = [int(n) for n in args.clients.split(",") if n]
    if args.floor:
        bench_server_floor(levels, args.level_requests, args.workers, args.warmup)
        return

    settings = RewearSettings() if args.home is None else RewearSettings(home=args.home)
    model_uri = args.model_uri
    if model_uri is None and args.bundle is not None:
        settings = RewearSettings(home=settings.home / "bench" / "serving")
        model_uri = register_bundle(args.bundle.resolve(), settings.home)
    elif model_uri is None:
        overrides: dict[str, Any] = {}
        for item in args.overrides:
            key, _, value = item.partition("=")
            overrides[key] = yaml.safe_load(value)
        settings = RewearSettings(home=settings.home / "bench" / "serving")
        model_uri = build_and_register(args.config, overrides, settings.home)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)

    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(model_uri)
    load_s = time.perf_counter() - started
    recommender = model.unwrap_python_model().recommender
    known, sessions = request_rows(recommender, args.requests + args.warmup, args.seed)
    results: dict[str, Any] = {
        "model_uri": model_uri,
        "model": recommender.metadata.get("model", recommender.metadata.get("model_kind")),
        "ranker": recommender.two_stage is not None,
        "catalogue_items": len(recommender.item_ids),
        "available_items": int(recommender.available.sum()),
        "load_s": load_s,
        "in_process_user": bench_in_process(model, known, args.warmup),
        "in_process_session": bench_in_process(model, sessions, args.warmup),
    }
    results["in_process_clients"] = [
        bench_clients(
            lambda: lambda row: model.predict(pd.DataFrame([row]), params={"k": K}),
            known[: args.level_requests // 4],
            clients,
            args.warmup,
        )
        for clients in levels
    ]
    log = settings.home / "bench-serving-server.log"
    with model_server(
        model_uri, settings.tracking_uri, log, threads=settings.serving_threads
    ) as base:
        results["http_user"] = bench_http(
            base, known[: args.http_requests + args.warmup], args.warmup
        )
    with model_server(
        model_uri,
        settings.tracking_uri,
        log,
        workers=args.workers,
        threads=settings.serving_threads,
    ) as base:
        many = known * (1 + args.level_requests // max(len(known), 1))
        results["http_clients"] = [
            bench_clients(http_asker(base), many[: args.level_requests], clients, args.warmup)
            for clients in levels
        ]
    results["server_workers"] = args.workers
    results["load_average"] = os.getloadavg()
    results["machine"] = f"{platform.node()} {platform.processor() or platform.machine()}"
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["commit"] = git_commit()

    print(f"\n{model_uri} ({results['model']}, {results['available_items']} items on sale)")
    print(f"{'single request, k=20':<34}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for key in ("in_process_user", "in_process_session", "http_user"):
        row = results[key]
        print(
            f"{key.replace('_', ' '):<34}{row['requests']:>6}{row['p50_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['max_ms']:>10.2f}"
        )
    print(
        f"\n{'concurrent clients, k=20':<28}{'clients':>8}{'req/s':>9}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
    )
    for key, label in (
        ("in_process_clients", "in-process pyfunc"),
        ("http_clients", f"HTTP, {args.workers} workers"),
    ):
        for row in results[key]:
            print(
                f"{label:<28}{row['clients']:>8}{row['requests_per_s']:>9.1f}"
                f"{row['p50_ms']:>9.2f}{row['p95_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                f"{row['errors']:>8}"
            )
    print(f"load average at the end: {results['load_average']}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
