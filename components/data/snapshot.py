"""Immutable, content-addressed data snapshots: parquet tables plus `manifest.json`.

The snapshot id is a hash of the tables' content, so ingesting identical input twice yields
the same id and the same folder; a snapshot folder is never modified once written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from components.data.schema import TABLE_NAMES, CanonicalTables, canonicalise
from components.store import atomic_directory, hash_frame, hash_json, read_json, write_json

MANIFEST = "manifest.json"


class SnapshotError(ValueError):
    """A snapshot is missing or damaged; the message says which and what to do."""


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    path: Path
    manifest: dict[str, object]


def snapshot_id_of(tables: CanonicalTables) -> str:
    """Content id: hash of each table's schema and values (order-sensitive, source-agnostic)."""
    tables = canonicalise(tables)
    return hash_json({name: hash_frame(tables.table(name)) for name in TABLE_NAMES})[:20]


def write_tables(tables: CanonicalTables, folder: Path) -> dict[str, dict[str, object]]:
    """Write the three tables as parquet into `folder`; return per-table schema/rows/hash."""
    tables = canonicalise(tables)
    described: dict[str, dict[str, object]] = {}
    for name in TABLE_NAMES:
        frame = tables.table(name)
        frame.to_parquet(folder / f"{name}.parquet", index=False)
        described[name] = {
            "rows": len(frame),
            "schema": {str(c): str(t) for c, t in frame.dtypes.items()},
            "hash": hash_frame(frame),
        }
    return described


def read_tables(folder: Path, source: dict[str, object] | None = None) -> CanonicalTables:
    """Read tables written by `write_tables`, back into canonical dtypes."""
    folder = Path(folder)
    frames = {}
    for name in TABLE_NAMES:
        path = folder / f"{name}.parquet"
        if not path.is_file():
            raise SnapshotError(f"{path} is missing: the folder is not a complete table set")
        frames[name] = pd.read_parquet(path)
    return canonicalise(CanonicalTables(source=source or {}, **frames))


def write_snapshot(tables: CanonicalTables, root: Path) -> Snapshot:
    """Store `tables` under `root/<snapshot_id>/` atomically; a no-op if it already exists."""
    snapshot_id = snapshot_id_of(tables)
    target = Path(root) / snapshot_id
    if not (target / MANIFEST).is_file():
        with atomic_directory(target) as staging:
            described = write_tables(tables, staging)
            manifest = {
                "snapshot_id": snapshot_id,
                "created_at": datetime.now(UTC).isoformat(),
                "source": tables.source,
                "tables": described,
            }
            write_json(staging / MANIFEST, manifest)
    return load_snapshot_manifest(target)


def load_snapshot_manifest(path: Path) -> Snapshot:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise SnapshotError(
            f"no snapshot at {path} ({MANIFEST} missing); "
            "see the snapshots listed under REWEAR_HOME/snapshots"
        )
    manifest = read_json(manifest_path)
    return Snapshot(snapshot_id=manifest["snapshot_id"], path=Path(path), manifest=manifest)


def read_snapshot(root: Path, snapshot_id: str) -> CanonicalTables:
    snapshot = load_snapshot_manifest(Path(root) / snapshot_id)
    return read_tables(snapshot.path, source=snapshot.manifest.get("source", {}))
