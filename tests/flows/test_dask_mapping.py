"""The retrain on a Dask cluster (REWEAR_TASK_RUNNER=dask, REWEAR_DASK_ADDRESS): the per-user
stages' shards run as Prefect tasks of their own on both workers and give the thread-pool
run's figures to the last digit; by default the ranker trains there too, with
DaskLGBMRanker (another booster: what it does not touch is still the same)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components.pipeline import evaluation_steps, ranking_steps, retrieval_steps

# Imported here, with the test session's environment: the flow's default task runner is
# read from the environment when flows.retrain is first imported, and imported inside the
# test (REWEAR_TASK_RUNNER=dask) every later retrain in the session would reach for this
# test's cluster after it has closed.
from flows.retrain import retrain
from tests.flows.conftest import FAST, SMALL_SYNTHETIC

REPO = Path(__file__).resolve().parents[2]
#: Shards of 64 users (chunks of 32): every per-user stage of the small market has several.
SHARDED = {
    **SMALL_SYNTHETIC,
    **FAST,
    "model.candidates.sources": ["covisitation", "popularity", "linear"],
    "model.candidates.chunk_users": 32,
    "model.ranker.max_rounds": 40,
    "model.ranker.ensemble_size": 1,
    "execution.shard_users": 64,
}
SHARDED_STAGES = ("generate_candidates", "build_features", "evaluate")
#: What must not differ between the two runs: every figure a per-user stage feeds.
COMPARED = ("metrics", "baselines", "comparisons", "segments", "evaluated_users")

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _shard_runs(flow_run_id) -> dict[str, list[str]]:
    """The flow run's shard task runs' names, by stage, and their states."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    out: dict[str, list[str]] = {}
    for run in runs:
        stage, _, rest = run.name.partition(".shard-")
        if rest:
            assert run.state is not None and run.state.name == "Completed", run
            out.setdefault(stage, []).append(run.name)
    return out


def _retrain_on(runner, client, overrides=SHARDED):
    """The retrain flow on `runner`, and (key, worker) of every task the cluster ran."""
    import distributed

    with distributed.get_task_stream(client) as stream:
        state = retrain.with_options(task_runner=runner)(
            config_path=str(REPO / "configs" / "synthetic.yaml"),
            overrides=overrides,
            return_state=True,
        )
    return state, [(str(task["key"]), task["worker"]) for task in stream.data]


def _untimed_label_stage(report):
    return {k: v for k, v in report["ranking"]["label_stage"].items() if k != "seconds"}


@pytest.mark.slow
def test_shards_run_as_tasks_on_the_dask_workers_with_the_thread_pool_s_metrics(
    rewear_home, tmp_path, monkeypatch
):
    distributed = pytest.importorskip("distributed")
    from prefect_dask import DaskTaskRunner

    from flows.task_runners import task_runner_from_settings

    other_home = tmp_path / "thread-pool-home"
    other_home.mkdir()
    shutil.copy(rewear_home / "mlflow.db", other_home / "mlflow.db")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        workers = set(client.scheduler_info()["workers"])
        monkeypatch.setenv("REWEAR_TASK_RUNNER", "dask")
        monkeypatch.setenv("REWEAR_DASK_ADDRESS", cluster.scheduler_address)
        # First with the ranker in the flow's process (REWEAR_DASK_RANKER=false): the very
        # model of the thread-pool run, so every metric can be compared.
        monkeypatch.setenv("REWEAR_DASK_RANKER", "false")
        dask_runner = task_runner_from_settings()
        assert isinstance(dask_runner, DaskTaskRunner)
        state, ran = _retrain_on(dask_runner, client)
        on_dask = state.result()

        # The same chain on the thread pool, in its own home (no shared cache).
        for name in ("REWEAR_TASK_RUNNER", "REWEAR_DASK_ADDRESS", "REWEAR_DASK_RANKER"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("REWEAR_HOME", str(other_home))
        thread_runner = task_runner_from_settings()
        assert not isinstance(thread_runner, DaskTaskRunner)
        on_threads = _retrain_on(thread_runner, client)[0].result()

        # Then the default on Dask: the ranker trains there too, with DaskLGBMRanker (the
        # first run's home: every stage before the ranker is a cache hit).
        monkeypatch.setenv("REWEAR_HOME", str(rewear_home))
        monkeypatch.setenv("REWEAR_TASK_RUNNER", "dask")
        monkeypatch.setenv("REWEAR_DASK_ADDRESS", cluster.scheduler_address)
        dask_ranker_state, dask_ranker_ran = _retrain_on(task_runner_from_settings(), client)
        dask_ranker = dask_ranker_state.result()

    assert on_dask["status"] == on_threads["status"] == dask_ranker["status"] == "completed"
    # (a) every per-user stage ran as several Prefect tasks, one per shard ...
    shards = _shard_runs(state.state_details.flow_run_id)
    assert set(shards) == set(SHARDED_STAGES), shards
    for stage in SHARDED_STAGES:
        assert len(shards[stage]) >= 2, shards
    # ... on the Dask workers, both of them (Dask keys name the step's function).
    steps = {
        "generate_candidates": retrieval_steps.generate_candidates.shard.__name__,
        "build_features": ranking_steps.build_features.shard.__name__,
        "evaluate": evaluation_steps.evaluate.shard.__name__,
    }
    shard_workers = {worker for key, worker in ran if key.startswith(tuple(steps.values()))}
    assert shard_workers == workers, ran
    for stage, step in steps.items():
        assert sum(key.startswith(f"{step}-") for key, _ in ran) == len(shards[stage]), ran
    assert not any(key.startswith("_train_part") for key, _ in ran), ran

    # (b) the figures are the thread-pool run's, to the last digit.
    for key in COMPARED:
        assert on_dask[key] == on_threads[key], key
    assert on_dask["candidate_recall"] == on_threads["candidate_recall"]
    assert _untimed_label_stage(on_dask) == _untimed_label_stage(on_threads)
    assert on_dask["ranking"]["best_iteration"] == on_threads["ranking"]["best_iteration"]

    # (c) by default the ranker trains with DaskLGBMRanker on the cluster (LightGBM's own
    # tasks on the workers): another booster, so only what it does not touch is the same.
    assert any(key.startswith("_train_part") for key, _ in dask_ranker_ran), dask_ranker_ran
    assert dask_ranker["baselines"] == on_threads["baselines"]
    assert dask_ranker["candidate_recall"] == on_threads["candidate_recall"]
    assert _untimed_label_stage(dask_ranker) == _untimed_label_stage(on_threads)
    assert abs(dask_ranker["metrics"]["ndcg@10"] - on_threads["metrics"]["ndcg@10"]) < 0.05
