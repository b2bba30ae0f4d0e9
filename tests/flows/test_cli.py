"""The `rewear` command line as a user runs it (typer's runner, real flow and registry)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from components.settings import RewearSettings
from flows.cli import app
from tests.flows.conftest import SMALL_SYNTHETIC, set_arguments

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
SMALL = set_arguments(SMALL_SYNTHETIC)


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


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("split.valid_duration=banana", "valid_duration: 'banana' is not a positive duration"),
        ("registry.model_name=../evil", "letters, digits, '.', '_' and '-'"),
        ("registry.promotion.metric=bogus@10", "use one of ['ndcg@10', 'recall@20'"),
        ("model.candidates.sources=[two_tower, bogus]", "(got 'bogus')"),
    ],
)
def test_bad_config_values_stop_the_run_before_ingest(rewear_home, override, expected):
    config = str(REPO / "configs/synthetic.yaml")
    for command in ("retrain", "monitor", "refresh-index", "evaluate"):
        result = runner.invoke(app, [command, "--config", config, "--set", override])
        assert result.exit_code == 2, (command, result.output)
        assert expected in " ".join(result.output.split()), (command, result.output)
        assert "Traceback" not in result.output
    # Nothing was read or written: no snapshot, no run folder.
    assert not any((rewear_home / "snapshots").iterdir())
    assert not any((rewear_home / "runs").iterdir())


def test_a_yaml_error_inside_set_is_one_line_naming_the_value(rewear_home):
    result = runner.invoke(app, ["retrain", "--set", "source.n_users=[1,"])
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: --set source.n_users=[1,: the value is not valid YAML")
    assert "quote it" in lines[0]


def test_a_read_only_home_is_one_line_naming_it_and_the_fix(rewear_home, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    result = runner.invoke(app, ["retrain", "--config", str(REPO / "configs/synthetic.yaml")])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: cannot write {rewear_home.resolve()}: Read-only file system; the file system "
        "is read-only: point REWEAR_HOME at a writable folder (or mount this one read-write)"
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "REWEAR_MLFLOW_TRACKING_URI",
            "banana",
            "REWEAR_MLFLOW_TRACKING_URI='banana' is not a URI",
        ),
        ("REWEAR_MAX_ANSWER_ROWS", "0", "REWEAR_MAX_ANSWER_ROWS: Input should be greater"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    rewear_home, monkeypatch, variable, value, expected
):
    monkeypatch.setenv(variable, value)
    result = runner.invoke(app, ["retrain"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), result.output


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


@pytest.mark.slow
def test_a_failed_run_prints_one_line_per_failure_and_keeps_the_traceback_in_the_log(
    rewear_home, tmp_path
):
    """A flow failure printed a 25-30-frame Prefect traceback and its message up to five
    times: the console now shows the failed stage's line and the CLI's, and the log file
    under REWEAR_HOME keeps the traceback."""
    events = tmp_path / "events.csv"
    events.write_text("user,item\nu1,i1\n")
    config = tmp_path / "bad.yaml"
    config.write_text(f"name: bad\nsource:\n  kind: interactions_file\n  interactions: {events}\n")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "400"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("rewear")), "retrain", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and "Warning" not in output, output
    assert output.count("has no column 'user_id'") == 2, output  # the stage's, the CLI's
    log_file = rewear_home / "logs" / "rewear.log"
    assert f"(traceback: {log_file})" in output.replace("\n", "")
    assert "Traceback" in log_file.read_text()


@pytest.mark.slow
def test_rewear_serve_answers_from_a_shell_that_has_not_activated_the_venv(tiny_champion):
    """`.venv/bin/mlflow models serve` died with exit code 127 unless .venv/bin was on PATH
    (MLflow starts uvicorn by name); the documented `.venv/bin/rewear serve` works as
    written, and reads REWEAR_HOME's registry without MLFLOW_TRACKING_URI."""
    import json
    import signal
    import time
    import urllib.request

    from components.serving.server import free_port

    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    env["PATH"] = "/usr/bin:/bin"
    rewear = Path(sys.executable).with_name("rewear")
    server = subprocess.Popen(
        [str(rewear), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read().decode(errors="replace")
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "rewear serve did not start in 120 s"
                time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"user_id": "u1"}], "params": {"k": 2}})
        request = urllib.request.Request(
            f"{base}/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert [row["rank"] for row in answer["predictions"]] == [1, 2]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


@pytest.mark.usefixtures("tiny_champion")
@pytest.mark.parametrize("command", [["recommend", "--user-id", "u1"], ["serve"]])
def test_commands_that_read_the_registry_refuse_a_lost_database_and_create_nothing(
    rewear_home, command
):
    """`rewear recommend` on an emptied registry re-created it (then told the user to
    retrain, which registered a new v1 beside the old artifacts)."""
    database = rewear_home / "mlflow.db"
    database.unlink()
    result = runner.invoke(app, command)
    assert result.exit_code == 1, result.output
    assert "Restore mlflow.db from a backup" in " ".join(result.output.split())
    assert not database.exists()


@pytest.mark.usefixtures("tiny_champion")
def test_a_copied_home_is_refused_until_relocated_then_reads_its_own_artifacts(
    rewear_home, tmp_path, monkeypatch
):
    """MLflow records artifact locations as absolute file:// paths: a copied or restored
    home read (and would have written) the original's artifacts."""
    import shutil

    copy = tmp_path / "restored-home"
    shutil.copytree(rewear_home, copy)
    monkeypatch.setenv("REWEAR_HOME", str(copy))
    refused = runner.invoke(app, ["recommend", "--user-id", "u1"])
    assert refused.exit_code == 1, refused.output
    assert "rewear relocate-home" in " ".join(refused.output.split())

    relocated = runner.invoke(app, ["relocate-home"])
    assert relocated.exit_code == 0, relocated.output
    assert "re-rooted onto" in relocated.output and "runs.artifact_uri" in relocated.output
    shutil.rmtree(rewear_home / "mlartifacts")  # the original's files are gone
    answered = runner.invoke(app, ["recommend", "--user-id", "u1", "--k", "2"])
    assert answered.exit_code == 0, answered.output
    again = runner.invoke(app, ["relocate-home"])
    assert "nothing to relocate" in again.output


@pytest.mark.slow
def test_sigterm_stops_a_retrain_promptly_marks_its_run_failed_and_moves_nothing(
    rewear_home, tmp_path
):
    """SIGTERM (what a Prefect worker sends to cancel, and `timeout`) stopped the temporary
    server but not the run, which went on for two minutes and failed with API errors."""
    import signal
    import time

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "300"}
    env.pop("PREFECT_API_URL", None)
    command = [str(Path(sys.executable).with_name("rewear")), "retrain"]
    command += ["--config", str(REPO / "configs/synthetic.yaml"), *SMALL]
    run = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in run.stdout:  # wait until training is under way
        seen.append(line)
        if "Task run 'split" in line or "two-tower" in line:
            break
    sent = time.monotonic()
    os.killpg(run.pid, signal.SIGTERM)  # the whole group, as a worker's cancel does
    rest, _ = run.communicate(timeout=120)
    stopped_s = time.monotonic() - sent
    output = "".join(seen) + rest
    assert run.returncode == 128 + signal.SIGTERM, output
    assert stopped_s < 60, stopped_s
    assert "retrain stopped: stopped by SIGTERM" in output
    assert "Traceback" not in output and "Error logging to API" not in output, output
    uri = RewearSettings(home=rewear_home).tracking_uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not client.search_registered_models()
