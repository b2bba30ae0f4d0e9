"""Clear errors from `rewear refresh-index` / `rewear monitor` and their flows, a killed
`rewear retrain`, and the deployments' pull step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.flows.conftest import (
    SMALL_MARKET,
    set_arguments,
    small_market,
    source_overrides,
    write_market,
)

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("command", ["refresh-index", "monitor"])
def test_a_missing_config_exits_2_and_names_it(rewear_home, tmp_path, command):
    result = runner.invoke(app, [command, "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml does not exist" in result.output


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("flow_name", ["refresh_index", "monitor"])
def test_without_a_champion_the_flows_fail_and_say_to_retrain_first(
    rewear_home, tmp_path, flow_name
):
    from flows.monitor import monitor
    from flows.refresh_index import NoChampionError, refresh_index

    flow = {"refresh_index": refresh_index, "monitor": monitor}[flow_name]
    config = write_market(small_market(n_users=20, n_days=7), tmp_path / "market")
    with pytest.raises(NoChampionError, match="has no 'champion' version yet: run the retrain"):
        flow(config_path=str(config))
    (report,) = list((rewear_home / "runs").glob("*/report.json"))
    assert json.loads(report.read_text())["status"] == "failed"


def _children(parent: int) -> dict[int, str]:
    """The processes whose parent is `parent`: pid -> command line (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_text()
        except (OSError, ValueError, IndexError):
            continue
    return found


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_sigkilled_retrain_leaves_no_prefect_server_running(tmp_path):
    """`rewear retrain` killed with SIGKILL once its temporary Prefect server is up: the
    server goes with it (Prefect's own temporary server was reparented and kept running)."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REWEAR_"))}
    env.update(REWEAR_HOME=str(home), PREFECT_HOME=str(home / "prefect"), PYTHONPATH=str(REPO))
    code = "from flows.cli import app; app(['retrain', '--config', 'configs/synthetic.yaml'])"
    with open(tmp_path / "output.log", "wb") as output:
        cli = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=env, stdout=output, stderr=output
        )
    deadline = time.monotonic() + 240
    servers: list[int] = []
    while not servers and time.monotonic() < deadline and cli.poll() is None:
        servers = [p for p, cmd in _children(cli.pid).items() if "server:create_app" in cmd]
        time.sleep(0.2)
    try:
        assert servers, (tmp_path / "output.log").read_text()[-3000:]
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _running(servers[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(servers[0]), "the Prefect server outlived the killed retrain"
    finally:
        cli.kill()
        for pid in servers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_default_retrain_through_the_cli_prints_no_traceback_or_api_error(tmp_path):
    """What a user sees from `rewear retrain` (its own temporary Prefect server, the
    default config on a smaller market): a summary, no traceback, no 'database is locked'
    and no '--- Error logging to API ---' from logs sent after the server stopped."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "REWEAR_"))}
    env.update(REWEAR_HOME=str(home), PREFECT_HOME=str(home / "prefect"), PYTHONPATH=str(REPO))
    code = (
        "import sys; from flows.cli import app; "
        "app(['retrain', '--config', 'configs/synthetic.yaml', *sys.argv[1:]])"
    )
    arguments = set_arguments(source_overrides(SMALL_MARKET))
    done = subprocess.run(
        [sys.executable, "-c", code, *arguments],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "registered rewear v1" in " ".join(done.stdout.split())
    for noise in ("Traceback", "Error logging to API", "database is locked"):
        assert noise not in output, output[-3000:]


def test_the_deployments_pull_step_says_what_to_set_without_rewear_project_dir(monkeypatch):
    """prefect.yaml's first pull step, as a worker runs it, with REWEAR_PROJECT_DIR unset or
    naming no folder: the run stops with what to export."""
    import asyncio

    import yaml
    from prefect.deployments.steps.utility import run_shell_script

    step = yaml.safe_load((REPO / "prefect.yaml").read_text())["pull"][0]
    inputs = step["prefect.deployments.steps.run_shell_script"]
    for value in (None, str(REPO / "no-such-folder")):
        if value is None:
            monkeypatch.delenv("REWEAR_PROJECT_DIR", raising=False)
        else:
            monkeypatch.setenv("REWEAR_PROJECT_DIR", value)
        with pytest.raises(RuntimeError, match="export REWEAR_PROJECT_DIR=/path/to"):
            asyncio.run(run_shell_script(**inputs))
    monkeypatch.setenv("REWEAR_PROJECT_DIR", str(REPO))
    asyncio.run(run_shell_script(**inputs))
