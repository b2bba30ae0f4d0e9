"""Shared fixtures: one real dependency each (temporary REWEAR_HOME with a pre-migrated MLflow
SQLite store, one Prefect test harness per session) and small canonical tables."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from components.data.schema import CanonicalTables, canonicalise

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ML100K = SHARED_DATA / "ml-100k"
ML1M_LCFN = SHARED_DATA / "ml-1m-lcfn"

needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").is_file(), reason=f"MovieLens-100K not found at {ML100K}"
)
needs_ml1m_lcfn = pytest.mark.skipif(
    not (ML1M_LCFN / "train.txt").is_file(), reason=f"ml-1m-lcfn not found at {ML1M_LCFN}"
)


@pytest.fixture(autouse=True)
def _environment_kept() -> Iterator[None]:
    """No test leaks environment variables into the next one (a Dask LocalCluster's nannies
    set OMP_NUM_THREADS=1 in this process: every subprocess started after would compute
    on one thread, with other float sums)."""
    from components.pipeline.processes import restore_environment

    saved = dict(os.environ)
    yield
    restore_environment(saved)


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create and migrate one MLflow SQLite store per session; tests copy it (ms, not s)."""
    from components.registry.tracking import configure_mlflow
    from components.settings import RewearSettings

    home = tmp_path_factory.mktemp("mlflow-template")
    configure_mlflow(RewearSettings(home=home), "template")
    return home / "mlflow.db"


@pytest.fixture
def rewear_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, migrated_mlflow_db: Path
) -> Iterator[Path]:
    """A fresh REWEAR_HOME holding an already-migrated, empty MLflow store."""
    import mlflow

    home = tmp_path / "rewear-home"
    home.mkdir()
    shutil.copy(migrated_mlflow_db, home / "mlflow.db")
    monkeypatch.setenv("REWEAR_HOME", str(home))
    previous = mlflow.get_tracking_uri()
    yield home
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test server per session with its own PREFECT_HOME (no shared SQLite)."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    # As the CLI does: the server's telemetry heartbeat races its start-up SQLite writes.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def make_tables(
    interactions: list[tuple[str, str, str, str]],
    items: dict[str, dict[str, object]] | None = None,
) -> CanonicalTables:
    """Tiny canonical tables from (user, item, iso-ts, event) tuples and optional item attrs."""
    frame = pd.DataFrame(interactions, columns=["user_id", "item_id", "ts", "event"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["weight"] = 1.0
    item_ids = sorted(set(frame["item_id"]) | set(items or {}))
    item_rows = [{"item_id": i, **(items or {}).get(i, {})} for i in item_ids]
    users = pd.DataFrame({"user_id": sorted(set(frame["user_id"]))})
    return canonicalise(
        CanonicalTables(interactions=frame, items=pd.DataFrame(item_rows), users=users)
    )
