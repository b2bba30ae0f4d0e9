"""Shared fixtures: one real dependency each (temporary REWEAR_HOME with a pre-migrated MLflow
SQLite store, one Prefect test harness per session), small canonical tables, the tiny
popularity bundle (as a folder and as the registered champion) and a hostile MLflow model
folder, which component, registry, serving and flow tests all use."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
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
    from components.environment_variables import restore_environment

    saved = dict(os.environ)
    yield
    restore_environment(saved)


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Create and migrate one MLflow SQLite store per session; tests copy it (ms, not s).
    No experiment of rewear's in it: one would record this folder's `mlartifacts`, and a
    copy that records another folder is a copied home, which rewear refuses."""
    from mlflow import MlflowClient

    database = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
    return database


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
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield home
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


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


# ------------------------------------------------------------------ the tiny bundle

#: Interactions per listing: the popularity order is i0 > i5 > i1 > i6 > i2 > i7 > i3 > i8 > i4.
TINY_COUNTS = {"i0": 10, "i5": 8, "i1": 7, "i6": 6, "i2": 5, "i7": 4, "i3": 3, "i8": 2, "i4": 1}
TINY_SOLD = "i0"
#: u1 bought i5: never recommend it to u1 again.
TINY_BUYER, TINY_BOUGHT = "u1", "i5"


def tiny_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(items, interactions) of the tiny bundle: ten listings in two categories, one sold."""
    ids = [f"i{n}" for n in range(10)]
    items = pd.DataFrame(
        {
            "item_id": ids,
            "title": [f"listing {n}" for n in range(10)],
            "category": ["dresses"] * 5 + ["shoes"] * 5,
            "price": [10.0 + n for n in range(10)],
            "created_at": pd.Timestamp("2026-01-01", tz="UTC"),
            "sold_at": [
                pd.Timestamp("2026-01-05", tz="UTC") if i == TINY_SOLD else pd.NaT for i in ids
            ],
        }
    )
    rows = [
        (f"v{n}", item, "view") for item, count in TINY_COUNTS.items() for n in range(count)
    ] + [(TINY_BUYER, TINY_BOUGHT, "purchase")]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "event"])
    interactions["ts"] = pd.Timestamp("2026-01-04", tz="UTC")
    interactions["weight"] = 1.0
    return items, interactions


def write_tiny_bundle(folder: Path, *, unknown_attributes: bool = False) -> Path:
    """A popularity bundle with known answers, written into `folder`.

    `unknown_attributes`: the most popular listing on sale (i5) has no title, category
    or price (the canonical schema allows null attributes)."""
    from components.config import PopularityConfig
    from components.retrieval.popularity import RecentPopularity
    from components.serving.bundle import build_bundle

    items, interactions = tiny_tables()
    if unknown_attributes:
        items["price"] = items["price"].astype("Float64")
        items.loc[items["item_id"] == "i5", ["title", "category", "price"]] = None
    as_of = pd.Timestamp("2026-01-06", tz="UTC")
    model = RecentPopularity.fit(
        interactions, PopularityConfig(half_life=None, event_weights={"purchase": 0.0}), as_of
    )
    build_bundle(
        folder,
        model=model,
        items=items,
        available=items["sold_at"].isna(),
        user_exclusions=interactions[interactions["event"] == "purchase"],
        metadata={"dataset": "tiny", "data_until": as_of.isoformat()},
    )
    return folder


def register_tiny_champion(home: Path, folder: Path, *, unknown_attributes: bool = False) -> str:
    """Register the tiny bundle (written into `folder`) as `models:/rewear@champion` in
    `home`'s registry; returns the tracking URI."""
    from components.registry.registration import CHAMPION, log_and_register
    from components.registry.tracking import configure_mlflow
    from components.settings import RewearSettings

    settings = RewearSettings(home=home)
    client, experiment_id = configure_mlflow(settings, "rewear")
    registered = log_and_register(
        client,
        client.create_run(experiment_id).info.run_id,
        write_tiny_bundle(folder, unknown_attributes=unknown_attributes),
        "rewear",
        {"snapshot_id": "s", "git_commit": "c", "config_hash": "h", "dataset": "tiny"},
        example_user_id="u1",
    )
    client.set_registered_model_alias("rewear", CHAMPION, str(registered.version))
    return settings.tracking_uri


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """The tiny bundle's folder, `tmp_path / "bundle"`."""
    return write_tiny_bundle(tmp_path / "bundle")


@pytest.fixture
def tiny_champion(rewear_home: Path, tmp_path: Path) -> str:
    """The tiny bundle (folder `tmp_path / "bundle"`) registered as the champion in
    `rewear_home`'s registry; the tracking URI."""
    return register_tiny_champion(rewear_home, tmp_path / "bundle")


# ------------------------------------------------------------------ a hostile model folder


@dataclass(frozen=True)
class PlantedModel:
    """An MLflow pyfunc model folder whose pickle touches `marker` when it is loaded: stands
    for any code a hostile model folder runs. `marker` does not exist yet."""

    folder: Path
    marker: Path


@pytest.fixture
def planted_model(tmp_path: Path) -> PlantedModel:
    """`tmp_path / "planted"`, its pickle touching `tmp_path / "ran"`."""
    import mlflow

    class Planted(mlflow.pyfunc.PythonModel):
        def __init__(self, marker: str) -> None:
            self.marker = marker

        def __reduce__(self):
            return (Path.touch, (Path(self.marker),))

        def predict(self, context, model_input, params=None):
            return model_input

    planted = PlantedModel(folder=tmp_path / "planted", marker=tmp_path / "ran")
    mlflow.pyfunc.save_model(str(planted.folder), python_model=Planted(str(planted.marker)))
    planted.marker.unlink(missing_ok=True)  # saving may load it back
    return planted
