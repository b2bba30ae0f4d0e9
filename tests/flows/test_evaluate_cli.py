"""`rewear evaluate`: scores a registered version on a snapshot with the shared code."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.flows.conftest import SMALL_SYNTHETIC

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "synthetic.yaml")
runner = CliRunner()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_evaluate_reproduces_the_run_and_refuses_leaky_versions(rewear_home, tmp_path):
    from flows.retrain import retrain

    held_out = retrain(
        config_path=CONFIG, overrides={**SMALL_SYNTHETIC, "model.refit_on_all_data": False}
    )
    out = tmp_path / "evaluation.json"
    args = ["--config", CONFIG, "--snapshot", held_out["snapshot_id"], "--json", str(out)]
    result = runner.invoke(app, ["evaluate", "--model", "models:/rewear/1", *args])
    assert result.exit_code == 0, result.output
    assert "paired bootstrap over users" in result.output
    assert "covisitation" in result.output
    evaluated = json.loads(out.read_text())
    # The registered bundle, scored through the pyfunc, gives the run's own test metrics.
    for key in ("recall@20", "ndcg@10", "recall@100", "coverage@20"):
        assert evaluated["metrics"][key] == pytest.approx(held_out["metrics"][key])
    assert evaluated["baselines"]["popularity"]["recall@20"] == pytest.approx(
        held_out["baselines"]["popularity"]["recall@20"]
    )

    refitted = retrain(
        config_path=CONFIG, overrides=SMALL_SYNTHETIC
    )  # trained on the test week too
    assert refitted["model"]["version"] == 2
    # Champion v1 stopped at the test cut-off, so the two are compared on the test window;
    # both evaluation models are the same held-out popularity: a difference of exactly 0.
    comparison = refitted["champion_comparison"]
    assert comparison["comparable"] is True
    assert comparison["evaluated_users"] == held_out["evaluated_users"]
    interval = comparison["intervals"]["ndcg@10"]
    assert interval["difference"] == interval["low"] == interval["high"] == 0.0
    result = runner.invoke(app, ["evaluate", "--model", "models:/rewear/2", *args])
    assert result.exit_code == 2
    assert "would be scored on its own training data" in " ".join(result.output.split())

    result = runner.invoke(app, ["evaluate", "--model", "models:/rewear/9", *args])
    assert result.exit_code == 1
    result = runner.invoke(
        app, ["evaluate", "--model", "models:/rewear/1", "--config", CONFIG, "--snapshot", "nope"]
    )
    assert result.exit_code == 2
    assert "no snapshot at" in " ".join(result.output.split())


@pytest.mark.usefixtures("rewear_home")
def test_evaluate_refuses_a_model_folder_that_is_not_a_bundle_without_running_it(planted_model):
    folder = str(planted_model.folder)
    result = runner.invoke(app, ["evaluate", "--model", folder, "--config", CONFIG])
    assert result.exit_code == 1
    assert "is not a rewear bundle" in " ".join(result.output.split())
    assert not planted_model.marker.exists()


@pytest.mark.usefixtures("rewear_home")
def test_evaluate_names_the_corrupt_file_of_a_bundle_folder(tiny_bundle):
    (tiny_bundle / "items.parquet").write_bytes(b"")
    result = runner.invoke(app, ["evaluate", "--model", str(tiny_bundle), "--config", CONFIG])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "items.parquet is truncated: 0 bytes" in output and "Traceback" not in output
