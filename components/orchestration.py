"""What the flows' orchestration needs from the project, without Prefect: the task runner
choice (environment settings) and fingerprints of the inputs that task caching keys on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from components.config import (
    FixedSplitSourceConfig,
    InteractionsFileSourceConfig,
    MovieLens100kSourceConfig,
    SourceConfig,
)
from components.store import fingerprint_files, hash_json

COMPONENTS_DIR = Path(__file__).resolve().parent


class OrchestrationSettings(BaseSettings):
    """How flows run their tasks: `REWEAR_TASK_RUNNER=thread_pool` (default) or `dask`;
    with dask, `REWEAR_DASK_ADDRESS=tcp://scheduler:8786` uses an existing cluster, and
    without it a local cluster of `REWEAR_DASK_WORKERS` processes is started per run."""

    model_config = SettingsConfigDict(env_prefix="REWEAR_", frozen=True, extra="ignore")

    task_runner: Literal["thread_pool", "dask"] = "thread_pool"
    #: Thread-pool size (null: Prefect's default).
    max_workers: int | None = Field(None, ge=1)
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    dask_threads_per_worker: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _address_needs_dask(self) -> OrchestrationSettings:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError(
                "REWEAR_DASK_ADDRESS is set but REWEAR_TASK_RUNNER is "
                f"{self.task_runner!r}: set REWEAR_TASK_RUNNER=dask, or unset the address"
            )
        return self


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
