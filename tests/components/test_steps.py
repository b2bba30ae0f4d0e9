"""The pipeline steps without Prefect: ingest, validate and snapshot over real files."""

import json

import numpy as np
import pandas as pd
import pytest

from components import steps
from components.config import PipelineConfig
from components.data.validation import DataValidationError


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
        raw = steps.ingest(_config(csv), run_dir)
        validated = steps.validate(raw["uri"], _config(csv), run_dir)
        ids.append(steps.snapshot(validated["uri"], tmp_path / "snapshots")["snapshot_id"])
    assert ids[0] == ids[1]
    assert len(list((tmp_path / "snapshots").iterdir())) == 1
    _write_events(csv, n=201)
    raw = steps.ingest(_config(csv), tmp_path / "run2")
    validated = steps.validate(raw["uri"], _config(csv), tmp_path / "run2")
    assert steps.snapshot(validated["uri"], tmp_path / "snapshots")["snapshot_id"] != ids[0]


def test_garbage_rows_are_quarantined_to_a_file_and_fail_above_the_threshold(tmp_path):
    csv = tmp_path / "events.csv"
    _write_events(csv, garbage_every=10)  # 10% unparseable timestamps
    run_dir = tmp_path / "run"
    raw = steps.ingest(_config(csv), run_dir)
    with pytest.raises(DataValidationError, match=r"interactions: 20 of 200 rows \(10.0%\)"):
        steps.validate(raw["uri"], _config(csv), run_dir)
    quarantined = pd.read_parquet(run_dir / "quarantine" / "interactions.parquet")
    assert len(quarantined) == 20
    assert quarantined["_reasons"].str.contains("ts: must not be null").all()
    summary = json.loads((run_dir / "validation.json").read_text())
    assert summary["counts"]["interactions"] == {"rows": 200, "quarantined": 20}
    assert not (run_dir / "validated").exists()
    # Above-threshold data with a looser threshold goes on with the 180 clean rows.
    validated = steps.validate(raw["uri"], _config(csv, max_bad_share=0.2), run_dir)
    assert validated["counts"]["interactions"]["quarantined"] == 20
