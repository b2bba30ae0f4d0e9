"""Resumability, concurrency and the Dask task runner, with real Prefect and MLflow."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from components.settings import RewearSettings
from tests.flows.conftest import FAST, last_moment, small_market, write_market

pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[2]
#: A worker process that dies (as if killed) in the promotion gate: after every stage, the
#: registration included (whose model logging ends the MLflow run), and before the report.
CRASHING_RUN = """
import os, sys, json
from components.registry import promotion
def killed(*args, **kwargs):
    os._exit(137)
promotion.run_gate = killed
from flows.retrain import retrain
retrain(config_path=sys.argv[1], overrides=json.loads(sys.argv[2]))
"""
PLAIN_RUN = """
import sys, json
from flows.retrain import retrain
result = retrain(config_path=sys.argv[1], overrides=json.loads(sys.argv[2]))
print("RESULT " + json.dumps({k: result[k] for k in ("run_id", "model", "snapshot_id")}))
"""
#: The restarted worker: a fresh process too, as in production (this test process has run
#: other flows with other homes; its Prefect state must not decide the outcome).
RESUMED_RUN = """
import sys, json
from flows.retrain import retrain
state = retrain(config_path=sys.argv[1], overrides=json.loads(sys.argv[2]), return_state=True)
result = state.result()
keys = ("status", "run_id", "snapshot_id", "metrics", "baselines")
print("RESULT " + json.dumps({
    "flow_run_id": str(state.state_details.flow_run_id), **{k: result[k] for k in keys}
}))
"""
#: The tasks a resumed run runs again: the registry reads and writes (never cached).
UNCACHED_STAGES = {"compare_with_champion", "register", "promote"}


def _subprocess_env() -> dict[str, str]:
    """The child runs against this process's Prefect server and result storage: it stands
    for the same worker before a crash (os.environ's PREFECT_HOME may differ from the one
    this process's Prefect settings were built with, when an earlier in-process CLI test set
    it first)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH

    return {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOCAL_STORAGE_PATH": str(PREFECT_LOCAL_STORAGE_PATH.value()),
        "PYTHONPATH": str(REPO),
    }


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _tracking() -> MlflowClient:
    uri = RewearSettings().tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def _files(folder: Path) -> dict[str, object]:
    """Every file's bytes; JSON files parsed, without wall-clock timings (`*_s` keys) and
    without bundle.json (it names its own run)."""
    files: dict[str, object] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        if path.suffix == ".json":
            files[name] = None if name == "bundle.json" else _untimed(json.loads(path.read_text()))
        else:
            files[name] = path.read_bytes()
    return files


def _untimed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not str(k).endswith("_s")}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_finished_stages_with_the_same_artifacts(
    rewear_home, tmp_path, monkeypatch
):
    """Killed in the promotion gate, the run stays open (never FINISHED without its
    report); the restarted run marks it FAILED, re-uses every finished stage and ends with
    the artifacts of a run never interrupted."""
    from flows.retrain import retrain

    tables = small_market()
    config = write_market(tables, tmp_path / "market", last_moment(tables) - pd.Timedelta("2D"))
    killed = _run_python(CRASHING_RUN, str(config), json.dumps(FAST))
    assert killed.returncode == 137, killed.stderr[-3000:]
    crashed_dirs = list((rewear_home / "runs").iterdir())
    assert len(crashed_dirs) == 1 and not (crashed_dirs[0] / "report.json").exists()
    assert (crashed_dirs[0] / "models" / "final").is_dir()  # fit had finished
    assert not list(rewear_home.rglob("*.tmp")), "a killed stage left a half-written folder"
    tracking = _tracking()
    crashed_run = crashed_dirs[0].name
    assert tracking.get_run(crashed_run).info.status == "RUNNING"

    restarted = _run_python(RESUMED_RUN, str(config), json.dumps(FAST))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    line = next(x for x in restarted.stdout.splitlines() if x.startswith("RESULT "))
    resumed = json.loads(line.removeprefix("RESULT "))
    assert resumed["status"] == "completed"
    abandoned = tracking.get_run(crashed_run)
    assert abandoned.info.status == "FAILED"
    assert "ended without closing it" in abandoned.data.tags["rewear.error"]
    assert tracking.get_run(resumed["run_id"]).info.status == "FINISHED"
    states = _task_states(resumed["flow_run_id"])
    cached = {name for name, state in states.items() if state == "Cached"}
    assert cached == set(states) - UNCACHED_STAGES, states
    assert {states[name] for name in UNCACHED_STAGES} == {"Completed"}

    # The same artifacts as a run that was never interrupted (another home: no shared cache).
    other = tmp_path / "other-home"
    other.mkdir()
    (other / "mlflow.db").write_bytes((rewear_home / "mlflow.db").read_bytes())
    monkeypatch.setenv("REWEAR_HOME", str(other))
    uninterrupted = retrain(config_path=str(config), overrides=FAST, return_state=True)
    reference = uninterrupted.result()
    fresh = _task_states(uninterrupted.state_details.flow_run_id)
    assert set(fresh.values()) == {"Completed"}, fresh
    assert resumed["snapshot_id"] == reference["snapshot_id"]
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["baselines"] == reference["baselines"]
    resumed_bundle = rewear_home / "runs" / resumed["run_id"] / "bundle"
    reference_bundle = other / "runs" / reference["run_id"] / "bundle"
    assert _files(resumed_bundle) == _files(reference_bundle)


@pytest.mark.slow
def test_two_retrains_at_once_register_two_intact_versions(rewear_home, tmp_path):
    import mlflow

    tables = small_market()
    config = write_market(tables, tmp_path / "market")
    command = [sys.executable, "-c", PLAIN_RUN, str(config), json.dumps(FAST)]
    runs = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env=_subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-3000:]
    results = [
        json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        for out, _ in outputs
    ]
    assert sorted(r["model"]["version"] for r in results) == [1, 2]
    assert results[0]["snapshot_id"] == results[1]["snapshot_id"]
    snapshots = list((rewear_home / "snapshots").iterdir())
    assert [s.name for s in snapshots] == [results[0]["snapshot_id"]]
    assert (snapshots[0] / "manifest.json").is_file()
    assert not list(rewear_home.rglob("*.tmp")), "a staging folder was left behind"
    uri = RewearSettings().tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for result in results:
        version = client.get_model_version("rewear", str(result["model"]["version"]))
        assert version.tags["run_id"] == result["run_id"]
        assert version.status == "READY"
        report = json.loads((rewear_home / "runs" / result["run_id"] / "report.json").read_text())
        assert report["status"] == "completed"
    aliases = client.get_registered_model("rewear").aliases
    assert {int(v) for v in aliases.values()} <= {1, 2}
    assert "challenger" in aliases
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for version in (1, 2):
        model = mlflow.pyfunc.load_model(f"models:/rewear/{version}")
        user = str(tables.interactions["user_id"].iloc[0])
        assert len(model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 5})) == 5


def test_a_local_dask_runner_leaves_the_process_environment_as_it_found_it():
    """Its workers compute on one BLAS / OpenMP thread each; this process, and every
    process it starts later, keeps its own thread settings."""
    from components.settings import OrchestrationSettings
    from flows.task_runners import task_runner_from_settings

    before = dict(os.environ)
    settings = OrchestrationSettings(task_runner="dask", dask_workers=1)
    with task_runner_from_settings(settings) as runner:
        workers = runner.client.run(lambda: os.environ.get("OMP_NUM_THREADS"))
        assert list(workers.values()) == ["1"]
        assert dict(os.environ) == before
    assert dict(os.environ) == before


@pytest.mark.slow
def test_monitor_runs_its_tasks_on_a_dask_cluster(rewear_home, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster, get_task_stream
    from prefect_dask import DaskTaskRunner

    from flows.monitor import monitor
    from flows.retrain import retrain
    from flows.task_runners import task_runner_from_settings

    tables = small_market()
    config = write_market(tables, tmp_path / "market", last_moment(tables) - pd.Timedelta("4D"))
    retrain(config_path=str(config), overrides=FAST)
    uri = RewearSettings().tracking_uri
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not registry.get_registered_model("rewear").aliases.get("champion"):
        registry.set_registered_model_alias("rewear", "champion", "1")
    write_market(tables, tmp_path / "market")
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=True) as cluster,
        Client(cluster) as client,
    ):
        monkeypatch.setenv("REWEAR_TASK_RUNNER", "dask")
        monkeypatch.setenv("REWEAR_DASK_ADDRESS", cluster.scheduler_address)
        runner = task_runner_from_settings()
        assert isinstance(runner, DaskTaskRunner)
        with get_task_stream(client) as stream:
            result = monitor.with_options(task_runner=runner)(config_path=str(config))
    assert result["status"] == "ok"
    ran = [task["key"] for task in stream.data]
    assert any("drift_task" in str(key) for key in ran), ran
    assert any("quality_task" in str(key) for key in ran), ran
    assert result["quality"]["evaluated_users"] > 0


class _Planted:
    """A hostile task result: unpickling it creates `marker` (it could run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _plant_pickle(records: Path, storage: Path, key: str, marker: Path) -> None:
    """A record for `key` in Prefect's pickle format, in both places Prefect has looked a
    key up: the stage records (metadata + result file) and the storage file itself."""
    import cloudpickle
    from prefect.serializers import PickleSerializer

    payload = PickleSerializer().dumps(_Planted(marker))
    metadata = {
        "storage_key": str(storage / key),
        "expiration": None,
        "serializer": json.loads(PickleSerializer().model_dump_json()),
        "prefect_version": "3.9.1",
        "storage_block_id": None,
    }
    (records / key).write_text(json.dumps(metadata))
    (storage / key).write_bytes(payload)
    assert cloudpickle.loads(base64.decodebytes(payload)) is None
    assert marker.exists(), "the planted payload must be live: unpickling it runs"
    marker.unlink()


def test_stage_records_hand_prefect_only_plain_json_whose_outputs_exist(rewear_home, tmp_path):
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.stage_records import RESULT_SERIALIZER, STAGE_RECORDS_FOLDER, StageRecords

    storage = tmp_path / "storage"
    records = storage / STAGE_RECORDS_FOLDER
    records.mkdir(parents=True)
    output = rewear_home / "runs" / "r1" / "split"
    output.mkdir(parents=True)
    marker = tmp_path / "executed"
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}):
        store = ResultStore(
            result_storage=LocalFileSystem(basepath=str(storage)),
            metadata_storage=StageRecords(),
            serializer=RESULT_SERIALIZER,
        )
        store.write({"uri": str(output), "rows": 3}, key="intact")
        assert store.exists("intact")
        assert ResultStore(
            result_storage=LocalFileSystem(basepath=str(storage)), metadata_storage=StageRecords()
        ).read("intact").result == {"uri": str(output), "rows": 3}
        output.rmdir()
        assert not store.exists("intact"), "a record whose output is gone is a miss"

        _plant_pickle(records, storage, "planted", marker)
        assert not store.exists("planted")
        with pytest.raises(ValueError, match="not plain JSON"):
            StageRecords().read_path("planted")
        # The format Prefect read before (result and metadata in one storage file).
        (storage / "old").write_bytes(
            json.dumps(
                {
                    "metadata": json.loads((records / "planted").read_text()),
                    "result": (storage / "planted").read_text(),
                }
            ).encode()
        )
        assert not store.exists("old")
    assert not marker.exists()


def _own_records(home: Path) -> dict[str, Path]:
    """The stage records whose results name folders of `home` (the storage is shared by the
    test session): key -> record file."""
    from flows.stage_records import STAGE_RECORDS_FOLDER, StageRecords

    found = {}
    for record in (StageRecords.storage() / STAGE_RECORDS_FOLDER).iterdir():
        result = Path(json.loads(record.read_text())["storage_key"])
        if result.is_file() and str(home) in result.read_text():
            found[record.name] = record
    return found


@pytest.mark.slow
def test_deleted_run_folders_are_recomputed_and_planted_pickles_never_run(rewear_home, tmp_path):
    from flows.retrain import retrain
    from flows.stage_records import StageRecords
    from tests.flows.conftest import TWO_TOWER_OVERRIDES

    config = write_market(small_market(), tmp_path / "market")

    def run() -> dict[str, str]:
        state = retrain(config_path=str(config), overrides=TWO_TOWER_OVERRIDES, return_state=True)
        assert state.result()["status"] == "completed"
        return _task_states(state.state_details.flow_run_id)

    run()
    shutil.rmtree(rewear_home / "runs")
    after_delete = run()  # every record names a deleted folder: all recomputed, no error
    assert set(after_delete.values()) == {"Completed"}, after_delete
    assert run()["ingest"] == "Cached"  # the rewritten records are reused

    marker = tmp_path / "executed"
    planted = _own_records(rewear_home)
    assert len(planted) >= 8
    for key in planted:
        _plant_pickle(planted[key].parent, StageRecords.storage(), key, marker)
    after_plant = run()
    assert not marker.exists(), "a planted pickle ran"
    assert set(after_plant.values()) == {"Completed"}, after_plant
    # The records looked up again (ingest's: the same config and data) are rewritten as
    # JSON; the later stages' keys name the new run's folders, so theirs are never read.
    serializers = {json.loads(p.read_text())["serializer"]["type"] for p in planted.values()}
    assert "json" in serializers


def test_runs_left_open_by_a_dead_process_are_marked_failed_at_the_next_start(rewear_home):
    from components.registry.tracking import (
        OWNER_TAG,
        STATE_TAG,
        close_run,
        configure_mlflow,
        owned_run_tags,
    )
    from flows.tracked_run import open_tracking

    settings = RewearSettings()
    client, experiment = configure_mlflow(settings, "rewear")
    owner_of_a_dead_process = subprocess.run(
        [
            sys.executable,
            "-c",
            "from components.process_ownership import process_owner as p; print(p())",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dead = {OWNER_TAG: owner_of_a_dead_process, STATE_TAG: "open"}
    killed_mid_run = client.create_run(experiment, tags=dead).info.run_id
    killed_after_log_model = client.create_run(experiment, tags=dead).info.run_id
    client.set_terminated(killed_after_log_model, "FINISHED")  # what MLflow's log_model does
    closed = client.create_run(experiment, tags=dead).info.run_id
    close_run(client, closed, failed=False)
    still_running = client.create_run(experiment, tags=owned_run_tags()).info.run_id

    open_tracking(settings, "rewear")
    status = {run: client.get_run(run).info.status for run in (killed_mid_run, closed)}
    assert status == {killed_mid_run: "FAILED", closed: "FINISHED"}
    assert client.get_run(killed_after_log_model).info.status == "FAILED"
    assert client.get_run(still_running).info.status == "RUNNING"
    assert client.get_run(killed_mid_run).data.tags[STATE_TAG] == "abandoned"


def _thread_of_shard(shard: dict) -> dict:
    """A shard step that says which thread ran it."""
    import threading

    return {
        "number": shard["number"],
        "main": threading.current_thread() is threading.main_thread(),
    }


def test_shards_on_the_thread_pool_run_in_the_flow_thread_where_their_timeout_holds(
    rewear_home, caplog
):
    """Submitted to the thread pool, every shard task ran in a worker thread, where its
    timeout cannot interrupt it, and Prefect printed a warning for each one."""
    from prefect import flow

    from flows.stage_tasks import map_shard_tasks

    @flow
    def sharded() -> list:
        shards = [{"number": n} for n in range(3)]
        return map_shard_tasks("probe.shard", _thread_of_shard, shards, {})

    with caplog.at_level("WARNING"):
        ran = sharded()
    assert ran == [{"number": n, "main": True} for n in range(3)]
    assert "worker thread" not in caplog.text


SERVER_START = """
import sys
from prefect.client.orchestration import get_client
from flows.prefect_server import local_prefect_server

with local_prefect_server():
    with get_client(sync_client=True) as client:
        assert client.hello().status_code == 200
print("SERVED")
"""


@pytest.mark.slow
def test_two_runs_started_at_once_on_a_new_home_both_get_a_server(tmp_path):
    """Both temporary servers migrated the new home's Prefect database at once, and the
    second crashed on `index ... already exists`."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "new-home" / "prefect")}
    env.pop("PREFECT_API_URL", None)
    env["PYTHONPATH"] = str(REPO)
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", SERVER_START],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for start in starts:
        output, _ = start.communicate(timeout=300)
        assert start.returncode == 0 and "SERVED" in output, output[-3000:]


#: The stages of the data and retrieval phases (the per-user one as its plan, shards and
#: combine), whatever a ranker setting says.
DATA_AND_RETRIEVAL = (
    "ingest",
    "validate",
    "snapshot",
    "split",
    "fit",
    "train_encoder",
    "build_index",
    "generate_candidates.",
)


@pytest.mark.slow
def test_a_changed_setting_reruns_only_the_stages_that_read_it(rewear_home, tmp_path):
    """Each step gets only the config sections it reads, so its cache key moves only with
    them: a new promotion margin reruns the publish phase alone; a new ranker setting reuses
    the data and retrieval phases."""
    from flows.retrain import retrain

    tables = small_market()
    config = str(write_market(tables, tmp_path / "market"))
    first = retrain(config_path=config, overrides=FAST, return_state=True)
    assert set(_task_states(first.state_details.flow_run_id).values()) == {"Completed"}

    margin = {**FAST, "registry.promotion.margin": 0.5}
    again = retrain(config_path=config, overrides=margin, return_state=True)
    assert again.result()["status"] == "completed"
    states = _task_states(again.state_details.flow_run_id)
    assert {name for name, state in states.items() if state != "Cached"} == UNCACHED_STAGES
    assert "train_encoder" in states and "train_ranker" in states  # the whole chain ran

    ranker = {**FAST, "model.ranker.learning_rate": 0.1}
    retuned = retrain(config_path=config, overrides=ranker, return_state=True)
    assert retuned.result()["status"] == "completed"
    states = _task_states(retuned.state_details.flow_run_id)
    reused = {name: state for name, state in states.items() if name.startswith(DATA_AND_RETRIEVAL)}
    assert len(reused) >= len(DATA_AND_RETRIEVAL) and set(reused.values()) == {"Cached"}, states
    assert states["train_ranker"] == "Completed", states
