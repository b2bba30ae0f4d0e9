"""Where rewear keeps its state: one home folder, `REWEAR_HOME` (default `./.rewear`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RewearSettings(BaseSettings):
    """Environment-driven settings; every path below derives from `home`."""

    model_config = SettingsConfigDict(env_prefix="REWEAR_", frozen=True)

    home: Path = Field(default=Path(".rewear"))
    #: Override the MLflow tracking/registry URI (e.g. a PostgreSQL-backed server).
    mlflow_tracking_uri: str | None = None

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
        for folder in (self.root, self.mlflow_artifacts, self.snapshots, self.runs):
            folder.mkdir(parents=True, exist_ok=True)
        return self
