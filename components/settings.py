"""Where rewear keeps its state: one home folder, `REWEAR_HOME` (default `./.rewear`)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from pydantic import Field, field_validator
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
