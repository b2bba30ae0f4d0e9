"""The monitor flow: quiet on data like the champion's, failing with an event on a shift, quiet
after an index refresh, and "not enough data" (neither a pass nor an alert) without new data."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.data.schema import CanonicalTables
from components.pipeline.monitoring import MonitoringAlertError
from flows.cli import app
from tests.flows.conftest import FAST, TWO_TOWER_OVERRIDES, last_moment, small_market, write_market

pytestmark = pytest.mark.usefixtures("prefect_harness")


def shifted(tables: CanonicalTables, since: pd.Timestamp) -> CanonicalTables:
    """After `since`: half the views become purchases, and new listings are a new, five
    times pricier category (a marketplace opening a luxury vertical)."""
    interactions = tables.interactions.copy()
    views = interactions.index[(interactions["ts"] >= since) & (interactions["event"] == "view")]
    interactions.loc[views[::2], "event"] = "purchase"
    items = tables.items.copy()
    new = items["created_at"] >= since
    items.loc[new, "price"] = items.loc[new, "price"] * 5
    items.loc[new, "category"] = "luxury"
    return CanonicalTables(interactions, items, tables.users, source=tables.source)


def _alert_events(since: float) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(event=EventNameFilter(name=["rewear.monitor.alert"])), limit=50
        )
    return [e for e in page.events if e.occurred.timestamp() >= since]


@pytest.mark.slow
def test_monitor_passes_on_similar_data_and_fails_with_an_event_on_a_shift(
    rewear_home, registry_client, tmp_path
):
    from flows.monitor import monitor
    from flows.retrain import retrain

    tables = small_market()
    cut = last_moment(tables) - pd.Timedelta("5D")
    config = write_market(tables, tmp_path / "market", cut)
    retrained = retrain(config_path=str(config), overrides=FAST)
    assert retrained["status"] == "completed"
    client = registry_client
    if not client.get_registered_model("rewear").aliases.get("champion"):
        client.set_registered_model_alias("rewear", "champion", "1")

    write_market(tables, tmp_path / "market")  # five more days, same marketplace
    quiet = monitor(config_path=str(config), overrides=FAST)
    assert quiet["status"] == "ok" and quiet["breaches"] == []
    assert quiet["champion_version"] == 1
    assert all(0 <= v < 0.25 for v in quiet["drift"]["psi"].values()), quiet["drift"]
    assert quiet["drift"]["current_rows"] > 0 and quiet["drift"]["reference_rows"] > 0
    assert quiet["quality"]["evaluated_users"] >= 20
    assert 0 < quiet["quality"]["metrics"]["recall@20"] <= 1
    assert 0 < quiet["quality"]["candidate_recall"] <= 1
    assert quiet["event_id"]
    metrics = client.get_run(quiet["run_id"]).data.metrics
    assert metrics["drift.psi.price"] == pytest.approx(quiet["drift"]["psi"]["price"])
    print("quiet", quiet["drift"]["psi"], quiet["quality"])

    started = time.time()
    write_market(shifted(tables, cut), tmp_path / "market")
    with pytest.raises(MonitoringAlertError, match="category_mix drifted: PSI") as raised:
        monitor(config_path=str(config), overrides=FAST)
    message = str(raised.value)
    assert "price drifted" in message and "event_mix drifted" in message
    assert "rewear.monitor.alert" in message
    report_paths = sorted(
        (rewear_home / "runs").glob("*/report.json"), key=lambda p: p.stat().st_mtime
    )
    report = pd.read_json(report_paths[-1], typ="series")
    assert report["status"] == "alert"
    assert all(value > 0.25 for value in report["drift"]["psi"].values()), report["drift"]
    print("shifted", report["drift"]["psi"], report["quality"])
    deadline = time.time() + 60
    while not (events := _alert_events(started)) and time.time() < deadline:
        time.sleep(1)
    assert events, "no rewear.monitor.alert event reached the Prefect API"
    assert events[0].resource.id == "rewear.model.rewear"
    assert events[0].payload["breaches"] == report["breaches"]
    # A champion is untouched by monitoring.
    assert int(client.get_registered_model("rewear").aliases["champion"]) == 1


@pytest.mark.slow
def test_after_an_index_refresh_the_monitor_stays_quiet_and_no_new_data_is_not_enough_data(
    rewear_home, registry_client, tmp_path
):
    from flows.monitor import monitor
    from flows.refresh_index import refresh_index
    from flows.retrain import retrain

    tables = small_market()
    last = last_moment(tables)
    folder = tmp_path / "market"
    config = write_market(tables, folder, last - pd.Timedelta("4D"))
    retrain(config_path=str(config), overrides=TWO_TOWER_OVERRIDES)
    client = registry_client
    if not client.get_registered_model("rewear").aliases.get("champion"):
        client.set_registered_model_alias("rewear", "champion", "1")

    # Nothing after the champion's data: said so, with the counts and minimums; exit 0.
    cli = CliRunner().invoke(app, ["monitor", "--config", str(config)])
    assert cli.exit_code == 0, cli.output
    printed = " ".join(cli.output.split())  # the console wraps long lines
    assert "insufficient_data: not enough data: 0 interactions after the champion's" in printed
    assert "PSI {}, champion v1" in printed
    empty = pd.read_json(_newest_report(rewear_home), typ="series")
    assert empty["status"] == "insufficient_data" and empty["breaches"] == []
    assert empty["drift"]["psi"] == {} and empty["drift"]["current_rows_after_training"] == 0
    assert "(min_rows 500)" in empty["summary"]
    assert "holds 0 evaluated users (min_users 20)" in empty["summary"]
    assert empty["event_id"]
    trained_until = empty["champion_trained_until"]

    # Two more days of the same marketplace; the refresh moves the champion's data_until.
    write_market(tables, folder, last - pd.Timedelta("2D"))
    refreshed = refresh_index(config_path=str(config), overrides=TWO_TOWER_OVERRIDES)
    assert refreshed["status"] == "completed" and refreshed["promoted"] is True
    after = monitor(config_path=str(config), overrides=TWO_TOWER_OVERRIDES)
    print("after refresh", after["drift"], after["summary"])
    assert after["champion_version"] == refreshed["version"] == 2
    assert after["champion_trained_until"] == trained_until  # the refresh did not move it
    assert after["champion_data_until"] > trained_until
    drift = after["drift"]
    assert after["breaches"] == [] and after["status"] != "alert"
    assert drift["enough_data"] is True
    assert all(0 <= value < 0.25 for value in drift["psi"].values()), drift
    assert 0.8 < drift["current_rows"] / drift["reference_rows"] < 1.6  # a week each
    assert drift["current_rows_after_training"] >= 500
    # The served bundle has seen every row: its quality window is empty, and says so.
    assert after["status"] == "insufficient_data"
    assert after["quality"]["enough_data"] is False and after["quality"]["evaluated_users"] == 0
    assert after["summary"].startswith("not enough data: the quality window (")

    write_market(tables, folder)  # two more days: every check has data, and passes
    full = monitor(config_path=str(config), overrides=TWO_TOWER_OVERRIDES)
    print("two days later", full["drift"], full["quality"])
    assert full["status"] == "ok" and full["breaches"] == []
    assert full["quality"]["evaluated_users"] >= 20
    assert full["champion_trained_until"] == trained_until
    assert full["champion_trained_until_from"] == "its bundle"  # the refresh recorded it

    # A refresh of the refresh (hourly): the cut-off is still the retrained version's.
    again = refresh_index(config_path=str(config), overrides=TWO_TOWER_OVERRIDES)
    assert again["version"] == 3 and again["promoted"] is True
    chained = monitor(config_path=str(config), overrides=TWO_TOWER_OVERRIDES)
    assert chained["champion_version"] == 3 and chained["breaches"] == []
    assert chained["champion_trained_until"] == trained_until
    assert chained["champion_trained_until_from"] == "its bundle"
    assert chained["drift"] == full["drift"]  # same data, same windows: the refresh changed none

    # The retrained version deleted: the refreshed bundle still knows its cut-off.
    client.delete_model_version("rewear", "1")
    orphan = monitor(config_path=str(config), overrides=TWO_TOWER_OVERRIDES)
    assert orphan["champion_trained_until_from"] == "its bundle"
    assert orphan["champion_trained_until"] == trained_until
    assert orphan["breaches"] == [] and orphan["drift"]["enough_data"] is True
    assert int(client.get_registered_model("rewear").aliases["champion"]) == 3


def _newest_report(home: Path) -> Path:
    return max((home / "runs").glob("*/report.json"), key=lambda path: path.stat().st_mtime)


def test_thresholds_are_validated_with_a_clear_message(rewear_home, tmp_path):
    from flows.monitor import monitor

    config = write_market(small_market(n_users=20, n_days=7), Path(tmp_path) / "m")
    with pytest.raises(Exception, match="max_psi"):
        monitor(config_path=str(config), thresholds={"max_psi": -1})
