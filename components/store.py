"""The artifact store: content hashes and atomic writes.

Every stage writes into a temporary sibling folder and renames it into place, so a crash
never leaves a half-written artifact that a later step or the registry could pick up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd


def hash_frame(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame: column names, dtypes and values, not the file bytes
    (parquet files embed writer versions, so equal data can give different bytes)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in frame.dtypes.items()]).encode())
    values = pd.util.hash_pandas_object(frame, index=False, categorize=False)
    digest.update(values.to_numpy().tobytes())
    return digest.hexdigest()


def hash_json(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only on success.

    If `target` already exists and `overwrite` is false, the new content is discarded
    (content-addressed targets are immutable: the same id means the same content).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        if target.exists():
            if not overwrite:
                shutil.rmtree(staging)
                return
            shutil.rmtree(target)
        try:
            os.replace(staging, target)
        except OSError:
            # A concurrent writer renamed the same content-addressed target first: keep
            # theirs (same id, same content). Anything else is a real error.
            if overwrite or not target.exists():
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


def fingerprint_files(paths: Iterable[Path]) -> str:
    """Cheap fingerprint of input files: path, size and modification time of each (of each
    file inside a folder). Equal fingerprints mean unchanged inputs, as `make` assumes;
    reading whole files to hash them would cost more than most stages they guard."""
    entries: list[list[object]] = []
    for path in sorted(Path(p).resolve() for p in paths):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                stat = file.stat()
            except FileNotFoundError:
                entries.append([str(file), None, None])
                continue
            entries.append([str(file), stat.st_size, stat.st_mtime_ns])
    return hash_json(entries)


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())
