"""Every setting the environment gives (`REWEAR_*`), read here and nowhere below the pipeline:
where rewear keeps its state (one home folder, `REWEAR_HOME`, default `./.rewear`), serving
limits, the overrides `load_config` applies, and how flows run their tasks."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RewearSettings(BaseSettings):
    """Environment-driven settings; every path below derives from `home`."""

    model_config = SettingsConfigDict(env_prefix="REWEAR_", frozen=True)

    home: Path = Field(default=Path(".rewear"))
    #: Override the MLflow tracking/registry URI (e.g. a PostgreSQL-backed server).
    mlflow_tracking_uri: str | None = None
    #: Serving limits (`REWEAR_MAX_ANSWER_ROWS`, `REWEAR_MAX_REQUEST_BYTES`): answer rows
    #: per request (request rows x k) and the request body's size; beyond them a request
    #: gets a 400 / 413 that names the limit.
    max_answer_rows: int = Field(default=100_000, ge=1)
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: `REWEAR_SERVING_THREADS`: compute threads (torch, OpenMP: LightGBM) per model server
    #: worker. A request scores a few hundred candidates, too little to share out: more
    #: threads per worker only contend with the other workers (docs/serving.md).
    serving_threads: int = Field(default=1, ge=1)
    #: `REWEAR_ENCODER_PROCESSES`: overrides `model.two_tower.processes` (data-parallel
    #: encoder training) without editing configs, e.g. on Dask workers with CPUs to spare.
    encoder_processes: int | None = Field(default=None, ge=1)
    #: `REWEAR_EXPOSURE_LOG`: where a served experiment logs its slots, over the spec's
    #: `experiment.exposure_log` (e.g. a PostgreSQL URL on a serving host).
    exposure_log: str | None = None

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _tracking_uri_has_a_scheme(cls, uri: str | None) -> str | None:
        if uri is not None and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", uri):
            raise ValueError(
                f"REWEAR_MLFLOW_TRACKING_URI={uri!r} is not a URI; write e.g. "
                "sqlite:////data/rewear/mlflow.db or http://mlflow:5000 (or unset it to use "
                "REWEAR_HOME/mlflow.db)"
            )
        return uri

    def config_overrides(self) -> dict[str, Any]:
        """The pipeline settings the environment overrides, as dotted keys: `load_config`
        applies them after the file's own and the caller's, so the loaded config (and every
        cache key and model built from it) holds the values the run really used."""
        overrides: dict[str, Any] = {}
        if self.encoder_processes is not None:
            overrides["model.two_tower.processes"] = self.encoder_processes
        return overrides

    @property
    def root(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_db}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def locks(self) -> Path:
        """Where runs of this home serialise what must not interleave (champion moves)."""
        return self.root / "locks"

    def ensure(self) -> RewearSettings:
        """Create the home's folders and check that the home takes writes: a read-only or
        full home fails here, naming it and the fix (`StorageError`), not later as a
        Prefect "readonly database" or an MLflow error."""
        from components.store import writing  # imports pandas: only when a home is used

        with writing(self.root):
            for folder in (self.root, self.mlflow_artifacts, self.snapshots, self.runs):
                folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root, prefix=".write-check-") as probe:
                probe.write(b"ok")
        return self


class OrchestrationSettings(BaseSettings):
    """How flows run their tasks (read without importing Prefect):
    `REWEAR_TASK_RUNNER=thread_pool` (default) or `dask`; with dask,
    `REWEAR_DASK_ADDRESS=tcp://scheduler:8786` uses an existing cluster, and without it a
    local cluster of `REWEAR_DASK_WORKERS` processes is started per run."""

    model_config = SettingsConfigDict(env_prefix="REWEAR_", frozen=True, extra="ignore")

    task_runner: Literal["thread_pool", "dask"] = "thread_pool"
    #: Thread-pool size (null: Prefect's default).
    max_workers: int | None = Field(None, ge=1)
    dask_address: str | None = None
    dask_workers: int = Field(2, ge=1)
    dask_threads_per_worker: int = Field(1, ge=1)
    #: `REWEAR_DASK_RANKER` (default true): on a Dask task runner the ranker trains on its
    #: cluster with DaskLGBMRanker; false: in the flow's process with LightGBM, as on the
    #: thread pool (the same ranker, so the same metrics, as a thread-pool run).
    dask_ranker: bool = True

    @model_validator(mode="after")
    def _address_needs_dask(self) -> OrchestrationSettings:
        if self.dask_address and self.task_runner != "dask":
            raise ValueError(
                "REWEAR_DASK_ADDRESS is set but REWEAR_TASK_RUNNER is "
                f"{self.task_runner!r}: set REWEAR_TASK_RUNNER=dask, or unset the address"
            )
        return self
