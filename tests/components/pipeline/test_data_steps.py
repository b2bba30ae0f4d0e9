"""The pipeline steps without Prefect: ingest, validate and snapshot over real files."""

import json

import numpy as np
import pandas as pd
import pytest

from components.config import PipelineConfig
from components.data.readers.parsing import SourceError
from components.data.split import read_split
from components.data.validation import DataValidationError
from components.pipeline import data_steps, publish_steps, retrieval_steps


def _write_events(path, n=200, garbage_every=0):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "uid": [f"u{i}" for i in rng.integers(0, 20, n)],
            "iid": [f"i{i}" for i in rng.integers(0, 50, n)],
            "time": (1_767_225_600 + np.arange(n) * 3600).astype(str),
            "action": rng.choice(["view", "like", "purchase"], n),
        }
    )
    if garbage_every:
        frame.loc[::garbage_every, "time"] = "not-a-time"
    frame.to_csv(path, index=False)


def _config(path, max_bad_share=0.05):
    return PipelineConfig.model_validate(
        {
            "name": "csv",
            "source": {
                "kind": "interactions_file",
                "interactions": str(path),
                "columns": {"user_id": "uid", "item_id": "iid", "ts": "time", "event": "action"},
            },
            "validation": {"max_bad_share": max_bad_share},
        }
    )


def test_ingesting_the_same_files_twice_gives_the_same_snapshot_id(tmp_path):
    csv = tmp_path / "events.csv"
    _write_events(csv)
    ids = []
    for attempt in range(2):
        run_dir = tmp_path / f"run{attempt}"
        raw = data_steps.ingest(_config(csv).source, run_dir)
        validated = data_steps.validate(raw["uri"], _config(csv).validation, run_dir)
        ids.append(data_steps.snapshot(validated["uri"], tmp_path / "snapshots")["snapshot_id"])
    assert ids[0] == ids[1]
    assert len(list((tmp_path / "snapshots").iterdir())) == 1
    _write_events(csv, n=201)
    raw = data_steps.ingest(_config(csv).source, tmp_path / "run2")
    validated = data_steps.validate(raw["uri"], _config(csv).validation, tmp_path / "run2")
    assert data_steps.snapshot(validated["uri"], tmp_path / "snapshots")["snapshot_id"] != ids[0]


def test_garbage_rows_are_quarantined_to_a_file_and_fail_above_the_threshold(tmp_path):
    csv = tmp_path / "events.csv"
    _write_events(csv, garbage_every=10)  # 10% unparseable timestamps
    run_dir = tmp_path / "run"
    raw = data_steps.ingest(_config(csv).source, run_dir)
    with pytest.raises(DataValidationError, match=r"interactions: 20 of 200 rows \(10.0%\)"):
        data_steps.validate(raw["uri"], _config(csv).validation, run_dir)
    quarantined = pd.read_parquet(run_dir / "quarantine" / "interactions.parquet")
    assert len(quarantined) == 20
    assert quarantined["_reasons"].str.contains("ts: must not be null").all()
    summary = json.loads((run_dir / "validation.json").read_text())
    assert summary["counts"]["interactions"] == {"rows": 200, "quarantined": 20}
    assert summary["exact_duplicate_events"] == {"rule": "drop", "rows": 0}
    assert not (run_dir / "validated").exists()
    # Above-threshold data with a looser threshold goes on with the 180 clean rows.
    validated = data_steps.validate(raw["uri"], _config(csv, max_bad_share=0.2).validation, run_dir)
    assert validated["counts"]["interactions"]["quarantined"] == 20


def _write_hourly_events(path, n=2000, changes=None):
    """`n` hourly events of 20 users from 2026-01-01 in epoch seconds (83 days for 2000),
    with `changes` {row: raw time value} written over them."""
    rng = np.random.default_rng(1)
    times = (1_767_225_600 + np.arange(n) * 3600).astype(object)
    for row, value in (changes or {}).items():
        times[row] = value
    pd.DataFrame(
        {
            "uid": [f"u{i % 20}" for i in range(n)],
            "iid": [f"i{i}" for i in rng.integers(0, 50, n)],
            "time": times,
            "action": rng.choice(["view", "like", "purchase"], n),
        }
    ).to_csv(path, index=False)


def _config_with(path, **sections):
    config = _config(path).model_dump(mode="json")
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    return PipelineConfig.model_validate(config)


def _split(config, run_dir):
    raw = data_steps.ingest(config.source, run_dir)
    validated = data_steps.validate(raw["uri"], config.validation, run_dir)
    snap = data_steps.snapshot(validated["uri"], run_dir / "snapshots")
    return validated, data_steps.split(snap["uri"], config.split, run_dir)


def _a_year_ahead(n):
    """Rows of `n` different users dated from a year after now, two days apart."""
    start = int((pd.Timestamp.now(tz="UTC") + pd.Timedelta("365D")).timestamp())
    return {201 * i: start + i * 2 * 86_400 for i in range(n)}


def test_rows_dated_a_year_ahead_are_quarantined_and_the_test_window_stays_real(tmp_path):
    # Issue 17: 0.25% of rows a year in the future used to become the whole test window.
    csv = tmp_path / "events.csv"
    _write_hourly_events(csv, changes=_a_year_ahead(5))
    validated, split = _split(_config(csv), tmp_path / "run")
    assert validated["counts"]["interactions"] == {"rows": 2000, "quarantined": 5}
    (violation,) = validated["violations"]
    assert violation["rule"].startswith("future timestamp: after the ingestion time")
    quarantined = pd.read_parquet(tmp_path / "run" / "quarantine" / "interactions.parquet")
    assert quarantined["_reasons"].str.startswith("ts: future timestamp").all()
    assert split["rows"]["test"] == 7 * 24 + 1  # the last 7 days of the real data, ends included
    assert split["users"]["test"] == 20
    assert split["test_cutoff"] == "2026-03-18T07:00:00+00:00"


def test_epoch_zero_rows_are_quarantined_before_the_floor(tmp_path):
    csv = tmp_path / "events.csv"
    _write_hourly_events(csv, changes={5: 0, 6: 86_400})
    validated, split = _split(_config(csv), tmp_path / "run")
    assert validated["counts"]["interactions"] == {"rows": 2000, "quarantined": 2}
    assert validated["violations"][0]["rule"].startswith(
        "before floor: before validation.min_timestamp=1990-01-01"
    )
    assert split["rows"]["train"] + split["rows"]["valid"] + split["rows"]["test"] == 1998


@pytest.mark.parametrize(("in_ms", "quarantined"), [(60, 60), (1000, None)])
def test_mixed_units_read_as_declared_quarantine_the_minority_within_the_bad_share(
    tmp_path, in_ms, quarantined
):
    """`ts_unit: s` on a column partly in milliseconds (which auto refuses): the
    milliseconds land ~56,000 years ahead and are quarantined, under the 5% bound."""
    ms = {row: str((1_767_225_600 + row * 3600) * 1000) for row in range(2000 - in_ms, 2000)}
    csv = tmp_path / "events.csv"
    _write_hourly_events(csv, changes=ms)
    columns = {"user_id": "uid", "item_id": "iid", "ts": "time", "event": "action"}
    auto = _config(csv)
    with pytest.raises(SourceError, match=r"mixes epoch units: .* in milliseconds"):
        data_steps.ingest(auto.source, tmp_path / "auto")
    declared = _config_with(csv, source={"columns": {**columns, "ts_unit": "s"}})
    if quarantined is None:  # half the column: far above the bound
        with pytest.raises(DataValidationError, match=r"1000 of 2000 rows \(50.0%\)"):
            _split(declared, tmp_path / "run")
        return
    validated, split = _split(declared, tmp_path / "run")
    assert validated["counts"]["interactions"]["quarantined"] == quarantined
    assert validated["violations"][0]["rule"].startswith("future timestamp")
    assert split["rows"]["test"] == 7 * 24 + 1


def test_a_test_window_thinner_than_min_users_is_refused_before_anything_is_bundled(tmp_path):
    # The future bound off: ten rows over 18 days a year ahead hold the valid and test
    # windows, the test window 4 rows of 4 users (issue 17 saw 8 and a promotion).
    csv = tmp_path / "events.csv"
    _write_hourly_events(csv, changes=_a_year_ahead(10))
    config = _config_with(csv, validation={"future_tolerance": None})
    run_dir = tmp_path / "run"
    _, split = _split(config, run_dir)
    assert split["rows"]["test"] == split["users"]["test"] == 4
    fitted = retrieval_steps.fit(
        split["uri"], config.model.popularity, config.model.refit_on_all_data, run_dir
    )
    with pytest.raises(data_steps.ThinTestWindowError) as error:
        publish_steps.bundle(split["uri"], fitted["final_model_uri"], config, run_dir)
    message = str(error.value)
    assert "the test window from " in message
    assert "holds 4 user(s) with a positive interaction" in message
    assert "registry.promotion.min_users=20" in message
    assert "Lengthen split.test_duration" in message
    assert not (run_dir / "bundle").exists()
    # A window that is thin by design (a tiny market) goes on with the setting lowered.
    lowered = _config_with(
        csv, validation={"future_tolerance": None}, registry={"promotion": {"min_users": 4}}
    )
    built = publish_steps.bundle(split["uri"], fitted["final_model_uri"], lowered, run_dir)
    assert (run_dir / "bundle").is_dir() and built["uri"] == str(run_dir / "bundle")


def test_the_evaluated_users_are_those_with_a_positive_event(tmp_path):
    csv = tmp_path / "events.csv"
    _write_hourly_events(csv)
    one_day = _config_with(csv, split={"test_duration": "1D"})
    _, split = _split(one_day, tmp_path / "run")
    data = read_split(split["uri"])
    assert len(data.test) == 25
    assert data_steps.require_enough_test_users(data, one_day.evaluation, 20) == 20
    only_purchases = _config_with(
        csv, split={"test_duration": "1D"}, evaluation={"positive_events": ["purchase"]}
    )
    buyers = data.test.loc[data.test["event"] == "purchase", "user_id"].nunique()
    assert 0 < buyers < 20
    with pytest.raises(data_steps.ThinTestWindowError, match=f"holds {buyers} user"):
        data_steps.require_enough_test_users(data, only_purchases.evaluation, 20)
