"""The retrain's split of a config, built once per source and reused by the bench scripts
that time one stage on it (encoder_speed.py, evaluation_speed.py)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from components.config import PipelineConfig, load_config
from components.data.split import DataSplit, read_split
from components.pipeline import chain


def cached_split(
    config_path: Path, overrides: dict[str, object] | None, cache: Path
) -> tuple[PipelineConfig, DataSplit]:
    """(config, split): the chain's data phase into `cache/<name>-<hash of the source>`,
    run only when that folder holds no split yet."""
    config = load_config(config_path, overrides)
    source = hashlib.sha256(json.dumps(config.source.model_dump(mode="json")).encode())
    run_dir = cache / f"{config.name}-{source.hexdigest()[:8]}"
    if not (run_dir / "split" / "split.json").is_file():
        started = time.perf_counter()
        chain.data_phase(config, run_dir, cache / "snapshots", chain.Stages())
        print(f"split built in {time.perf_counter() - started:.1f} s -> {run_dir / 'split'}")
    return config, read_split(run_dir / "split")
