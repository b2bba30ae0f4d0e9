"""The promotion gate's smoke test: load a registered version in a fresh Python process, as
a server would, and time single-row requests (a known user, an unknown user, an anonymous
session). Whether it loads and answers decides more than any metric: a version that does
not is never promoted, not even by `force`."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import PromotionConfig
from components.registry.registration import model_uri

SMOKE_SCRIPT = Path(__file__).resolve().parents[1] / "serving" / "smoke_check.py"
SMOKE_K = 20
#: A user id no marketplace uses: the smoke request for the unknown-user fallback.
UNKNOWN_SMOKE_USER = "rewear-smoke-unknown-user"


@dataclass(frozen=True)
class SmokeResult:
    """What the fresh process saw: did the version load and answer, and how fast."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    load_s: float | None = None
    #: The untimed first pass over the smoke requests (checks answers, warms lazy state).
    first_pass_ms: float | None = None
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None


def smoke_requests(bundle_dir: Path, example_user_id: str | None) -> list[dict[str, Any]]:
    """Request rows for the smoke test: a known user (when the bundle has one), an unknown
    user, and an anonymous session over two available listings."""
    catalogue = pd.read_parquet(
        Path(bundle_dir) / "items.parquet", columns=["item_id", "available"]
    )
    listed = catalogue.loc[catalogue["available"], "item_id"].astype(str).head(2).tolist()
    rows: list[dict[str, Any]] = [{"user_id": UNKNOWN_SMOKE_USER}]
    if example_user_id is not None:
        rows.insert(0, {"user_id": example_user_id})
    if listed:
        rows.append({"recent_item_ids": listed})
    return rows


def smoke_in_fresh_process(
    tracking_uri: str,
    model_uri: str,
    requests: list[dict[str, Any]],
    n_requests: int,
    timeout_s: float,
) -> SmokeResult:
    """Load `model_uri` from the registry in a new Python process and send `n_requests`
    single-row requests (cycling through `requests`, k = SMOKE_K)."""
    job = {
        "tracking_uri": tracking_uri,
        "model_uri": model_uri,
        "requests": requests,
        "n_requests": n_requests,
        "k": SMOKE_K,
    }
    try:
        done = subprocess.run(
            [sys.executable, "-P", str(SMOKE_SCRIPT)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return SmokeResult(ok=False, problems=[f"no answer within {timeout_s:.0f} s"])
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = done.stderr.strip().splitlines()[-3:]
        return SmokeResult(ok=False, problems=[f"exit code {done.returncode}: {' | '.join(tail)}"])
    return SmokeResult(**result)


def fresh_smoke(
    tracking_uri: str,
    model_name: str,
    version: int,
    bundle_dir: Path,
    example_user_id: str | None,
    config: PromotionConfig,
) -> SmokeResult:
    """The gate's smoke test of `model_name` v`version`: loaded from the registry in a
    fresh process, asked the smoke requests `config.latency_requests` times."""
    return smoke_in_fresh_process(
        tracking_uri,
        model_uri(model_name, version=version),
        smoke_requests(bundle_dir, example_user_id),
        config.latency_requests,
        config.smoke_timeout_s,
    )
