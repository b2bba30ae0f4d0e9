"""The artifact store: content hashes and atomic writes.

Every stage writes into a temporary sibling folder and renames it into place, so a crash
never leaves a half-written artifact that a later step or the registry could pick up.

A write that fails for a reason no retry fixes (disk full, quota, read-only file system,
permission) becomes one `StorageError` naming the path and what to do; it is not an
`OSError`, so the flows' retry of transient I/O errors does not retry it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


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


class StorageError(RuntimeError):
    """A write under REWEAR_HOME (or another output folder) that no retry can fix; the
    message names the path, the cause and the fix."""


#: What to do about each cause; the keys are the errnos a retry cannot fix.
_STORAGE_ADVICE = {
    errno.ENOSPC: "the disk is full: free space on it (old folders under REWEAR_HOME/runs "
    "and REWEAR_HOME/snapshots can go) or point REWEAR_HOME at a larger disk",
    errno.EDQUOT: "the disk quota is used up: free space or point REWEAR_HOME at a folder "
    "with quota left",
    errno.EROFS: "the file system is read-only: point REWEAR_HOME at a writable folder "
    "(or mount this one read-write)",
    errno.EACCES: "permission denied: make the folder writable for this user or point "
    "REWEAR_HOME at one that is",
    errno.EPERM: "operation not permitted: make the folder writable for this user or point "
    "REWEAR_HOME at one that is",
}


def storage_error(error: BaseException, path: Path) -> StorageError | None:
    """The clear error for a failed write under `path` when no retry can fix it (disk full,
    quota, read-only, permission), else None.

    Understands an `OSError` and a `shutil.Error` from `copytree`, which keeps only the text
    of each file's error: the first listed error whose text is one of the causes counts.
    """
    code, where = None, None
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list):
        texts = {os.strerror(known): known for known in _STORAGE_ADVICE}
        for entry in error.args[0]:
            if isinstance(entry, tuple) and len(entry) == 3:
                found = [texts[text] for text in texts if text in str(entry[2])]
                if found:
                    code, where = found[0], entry[1]
                    break
    elif isinstance(error, OSError) and error.errno in _STORAGE_ADVICE:
        code, where = error.errno, error.filename
    if code is None:
        return None
    failed = Path(where) if where else Path(path)
    context = "" if failed == Path(path) else f" (while writing {path})"
    return StorageError(
        f"cannot write {failed}{context}: {os.strerror(code)}; {_STORAGE_ADVICE[code]}"
    )


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a disk-full / read-only / permission error inside the block into a
    `StorageError` naming `path`; other errors pass through unchanged."""
    try:
        yield
    except (OSError, shutil.Error) as error:
        clear = storage_error(error, Path(path))
        if clear is None:
            raise
        raise clear from error


@contextlib.contextmanager
def atomic_directory(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only on success.

    If `target` already exists and `overwrite` is false, the new content is discarded
    (content-addressed targets are immutable: the same id means the same content).
    """
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        )
    try:
        with writing(target):
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
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with writing(path), os.fdopen(handle, "w") as stream:
            stream.write(text)
        with writing(path):
            os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created with its folder) for the block:
    serialises processes on one machine, and the kernel releases it if the holder dies."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


class ParquetAppender:
    """Appends frames to one parquet file as row groups, with the first frame's schema: a
    stage that works through users in chunks writes one file without holding every chunk
    in memory (categoricals need fixed vocabularies, so that every chunk has that schema)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ParquetAppender:
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self._writer is None:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            self._writer = pq.ParquetWriter(self.path, table.schema)
        else:
            table = pa.Table.from_pandas(frame, schema=self._writer.schema, preserve_index=False)
        self._writer.write_table(table)

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None:
            self._writer.close()


def columns_with_values(path: Path, columns: Iterable[str]) -> list[str]:
    """Those of `columns` holding at least one non-null value, in the order given: decided
    on the row groups' null counts (the file's metadata), a column without statistics is
    read alone. A stage that drops empty features never reads the data for it."""
    parquet = pq.ParquetFile(path)
    meta = parquet.metadata
    positions = {meta.schema.column(i).name: i for i in range(meta.num_columns)}
    kept = []
    for column in columns:
        chunks = [meta.row_group(g).column(positions[column]) for g in range(meta.num_row_groups)]
        if all(
            chunk.statistics is not None and chunk.statistics.has_null_count for chunk in chunks
        ):
            if any(chunk.statistics.null_count < chunk.num_values for chunk in chunks):
                kept.append(column)
        elif parquet.read(columns=[column]).column(0).null_count < meta.num_rows:
            kept.append(column)
    return kept


def parquet_row_pieces(
    path: Path, row_sets: Iterable[np.ndarray], columns: list[str] | None = None
) -> Iterator[tuple[int, np.ndarray, pa.Table]]:
    """The rows at the positions in each of `row_sets`, read one row group at a time: yields
    (which set, where those rows go in that set's order, the rows as a table), so a stage
    that needs parts of a large file never holds all of it. `columns`: only these."""
    parquet = pq.ParquetFile(path)
    sets = [np.asarray(rows, dtype=np.int64) for rows in row_sets]
    orders = [np.argsort(rows, kind="stable") for rows in sets]
    wanted = [rows[order] for rows, order in zip(sets, orders, strict=True)]
    start = 0
    for group in range(parquet.num_row_groups):
        size = parquet.metadata.row_group(group).num_rows
        table = None
        for which, (rows, order) in enumerate(zip(wanted, orders, strict=True)):
            low, high = np.searchsorted(rows, [start, start + size])
            if high > low:
                if table is None:
                    table = parquet.read_row_group(group, columns=columns)
                yield which, order[low:high], table.take(pa.array(rows[low:high] - start))
        start += size


def read_parquet_rows(path: Path, *row_sets: np.ndarray) -> list[pd.DataFrame]:
    """For each of `row_sets`, the rows at those positions of a parquet file, in that order
    (`parquet_row_pieces`: the file is read once, one row group at a time)."""
    pieces: list[list[pa.Table]] = [[] for _ in row_sets]
    targets: list[list[np.ndarray]] = [[] for _ in row_sets]
    for which, positions, table in parquet_row_pieces(path, row_sets):
        pieces[which].append(table)
        targets[which].append(positions)
    frames = []
    for found, positions in zip(pieces, targets, strict=True):
        if not found:
            frames.append(pq.ParquetFile(path).schema_arrow.empty_table().to_pandas())
            continue
        order = np.concatenate(positions)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        frames.append(pa.concat_tables(found).to_pandas().take(inverse).reset_index(drop=True))
    return frames
