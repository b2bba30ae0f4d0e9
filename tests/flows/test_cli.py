"""The `rewear` command line as a user runs it (typer's runner, real flow and registry)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
SMALL = [
    "--set", "source.n_users=300",
    "--set", "source.n_days=21",
]  # fmt: skip


def test_missing_config_file_exits_2_and_names_it(rewear_home, tmp_path):
    result = runner.invoke(app, ["retrain", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml does not exist" in result.output


def test_malformed_override_is_refused(rewear_home):
    result = runner.invoke(app, ["retrain", "--set", "source.n_users"])
    assert result.exit_code == 2
    assert "key=value" in result.output


def test_invalid_override_value_names_the_field(rewear_home):
    result = runner.invoke(
        app,
        ["retrain", "--config", str(REPO / "configs/synthetic.yaml"), "--set", "source.n_users=-3"],
    )
    assert result.exit_code == 2
    assert "n_users" in result.output


def test_recommend_without_a_registered_model_says_to_retrain(rewear_home):
    result = runner.invoke(app, ["recommend", "--user-id", "u1"])
    assert result.exit_code == 1
    assert "rewear retrain" in result.output


def test_data_generate_writes_canonical_parquet(tmp_path):
    out = tmp_path / "market"
    result = runner.invoke(
        app, ["data", "generate", "--out", str(out), "--n-users", "60", "--n-days", "8"]
    )
    assert result.exit_code == 0, result.output
    interactions = pd.read_parquet(out / "interactions.parquet")
    assert {"user_id", "item_id", "ts", "event", "weight"} <= set(interactions.columns)
    assert interactions["user_id"].nunique() <= 60


@pytest.mark.slow
def test_retrain_then_recommend_prints_a_ranked_table(rewear_home, tmp_path):
    # The installed console script in a subprocess, as a user runs it: its own temporary
    # Prefect server (PREFECT_HOME in tmp), the shared test REWEAR_HOME.
    script = Path(sys.executable).with_name("rewear")
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "REWEAR_HOME": str(rewear_home),
        "COLUMNS": "250",
    }
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [str(script), "retrain", "--config", str(REPO / "configs/synthetic.yaml"), *SMALL],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recall@20" in done.stdout and "report:" in done.stdout
    assert "registered rewear v1" in done.stdout
    result = runner.invoke(app, ["recommend", "--user-id", "u000001", "--k", "5"])
    assert result.exit_code == 0, result.output
    assert "top 5 for user u000001" in result.output
    result = runner.invoke(app, ["recommend", "--user-id", "u000001", "--k", "0"])
    assert result.exit_code == 2
    assert "k must be between 1 and" in result.output
