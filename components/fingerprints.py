"""Fingerprints of the inputs that task caching keys on: the files a source reads and the
source of the `components` package."""

from __future__ import annotations

from pathlib import Path

from components.config import (
    FixedSplitSourceConfig,
    InteractionsFileSourceConfig,
    MovieLens100kSourceConfig,
    SourceConfig,
)
from components.store import fingerprint_files, hash_json

COMPONENTS_DIR = Path(__file__).resolve().parent


def source_paths(source: SourceConfig) -> list[Path]:
    """The files or folders a source reads (none for the synthetic generator, whose
    config alone determines its data)."""
    if isinstance(source, InteractionsFileSourceConfig):
        return [p for p in (source.interactions, source.items, source.users) if p is not None]
    if isinstance(source, MovieLens100kSourceConfig | FixedSplitSourceConfig):
        return [source.path]
    return []


def source_fingerprint(source: SourceConfig) -> str:
    """Changes when the source's data may have changed (a file rewritten, appended to,
    replaced): what the ingest step's cache key adds to the config."""
    return fingerprint_files(source_paths(source))


_code_fingerprint: str | None = None


def code_fingerprint() -> str:
    """Hash of the `components` package's source: a cached stage result is reused only by
    the code that produced it (a task's own source is a thin wrapper, not the ML)."""
    global _code_fingerprint
    if _code_fingerprint is None:
        files = sorted(COMPONENTS_DIR.rglob("*.py"))
        _code_fingerprint = hash_json(
            [[str(f.relative_to(COMPONENTS_DIR)), f.read_text()] for f in files]
        )
    return _code_fingerprint
