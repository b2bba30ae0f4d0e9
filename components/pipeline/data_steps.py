"""The data phase's steps: read the source, quarantine bad rows, content-address a snapshot,
split it. Plain functions over paths and configs: each reads its inputs from the artifact
store, writes its outputs atomically and returns a small typed record
(`components.pipeline.results`). Callable without Prefect, from a test or a notebook.
"""

from __future__ import annotations

from pathlib import Path

from components.config import EvaluationConfig, SourceConfig, SplitConfig, ValidationConfig
from components.data.snapshot import read_tables, snapshot_id_of, write_snapshot, write_tables
from components.data.sources import load_source
from components.data.split import DataSplit, split_tables, write_split
from components.data.validation import enforce_bad_share, validate_tables
from components.evaluation.protocol import positive_window
from components.pipeline.results import (
    IngestResult,
    SnapshotResult,
    SplitResult,
    ValidationResult,
)
from components.store import atomic_directory, read_json, write_json


def ingest(source: SourceConfig, run_dir: Path) -> IngestResult:
    """Read the configured source into canonical tables under `run_dir/raw`."""
    tables = load_source(source)
    target = Path(run_dir) / "raw"
    with atomic_directory(target, overwrite=True) as staging:
        described = write_tables(tables, staging)
        write_json(staging / "source.json", tables.source)
    return {
        "uri": str(target),
        "content_id": snapshot_id_of(tables),
        "rows": {name: info["rows"] for name, info in described.items()},
    }


def validate(raw_uri: str, validation: ValidationConfig, run_dir: Path) -> ValidationResult:
    """Quarantine bad rows to `run_dir/quarantine/*.parquet`; fail above the threshold."""
    raw = Path(raw_uri)
    tables = read_tables(raw, source=read_json(raw / "source.json"))
    result = validate_tables(tables, validation)
    quarantine_dir = Path(run_dir) / "quarantine"
    quarantine_files = {}
    with atomic_directory(quarantine_dir, overwrite=True) as staging:
        for name, frame in result.quarantine.items():
            if len(frame):
                frame.to_parquet(staging / f"{name}.parquet", index=False)
                quarantine_files[name] = str(quarantine_dir / f"{name}.parquet")
    summary: ValidationResult = {
        "uri": str(Path(run_dir) / "validated"),
        "counts": result.counts,
        "violations": result.summary()["violations"],
        "exact_duplicate_events": result.duplicates,
        "quarantine_files": quarantine_files,
    }
    write_json(Path(run_dir) / "validation.json", {k: v for k, v in summary.items() if k != "uri"})
    enforce_bad_share(result, validation)
    target = Path(run_dir) / "validated"
    with atomic_directory(target, overwrite=True) as staging:
        write_tables(result.tables, staging)
        write_json(staging / "source.json", result.tables.source)
    return summary


def snapshot(validated_uri: str, snapshots_root: Path) -> SnapshotResult:
    """Content-address the validated tables (same content, same id, written once)."""
    folder = Path(validated_uri)
    tables = read_tables(folder, source=read_json(folder / "source.json"))
    written = write_snapshot(tables, snapshots_root)
    return {"snapshot_id": written.snapshot_id, "uri": str(written.path)}


def split(
    snapshot_uri: str,
    config: SplitConfig,
    run_dir: Path,
    *,
    evaluation: EvaluationConfig | None = None,
    min_test_users: int = 1,
) -> SplitResult:
    """Split the snapshot into `run_dir/split`. With `evaluation` (how the model registered
    from it is evaluated), refuse a test window with fewer than `min_test_users` users to
    measure (see `require_enough_test_users`) before any training."""
    tables = read_tables(Path(snapshot_uri))
    target = Path(run_dir) / "split"
    data = split_tables(tables, config)
    summary = write_split(data, target)
    if evaluation is not None:
        require_enough_test_users(data, evaluation, min_test_users)
    return {"uri": str(target), **summary}


class ThinTestWindowError(ValueError):
    """The test window has too few users for its metrics to mean anything."""


def require_enough_test_users(data: DataSplit, evaluation: EvaluationConfig, minimum: int) -> int:
    """The number of users the evaluation scores (a positive event in the test window);
    fewer than `minimum` (`registry.promotion.min_users`) raises: a model measured on a
    handful of users (say, rows dated after the real data) must not be registered, let alone
    promoted as a first version with no champion to compare with."""
    users = int(positive_window(data.test, evaluation)["user_id"].nunique())
    if users < minimum:
        where = "the fixed split's test file"
        if data.test_cutoff is not None:
            where = f"the test window from {data.test_cutoff} to {data.test['ts'].max()}"
        raise ThinTestWindowError(
            f"{where} holds {users} user(s) with a positive interaction, fewer than "
            f"registry.promotion.min_users={minimum}: metrics on so few users are noise, so "
            "nothing is registered. Lengthen split.test_duration (or split.test_fraction), "
            "check the newest timestamps of the data, or lower registry.promotion.min_users"
        )
    return users
