"""Clear errors from `rewear refresh-index` / `rewear monitor` and their flows."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.flows.market_files import small_market, write_market

runner = CliRunner()


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
