import pandas as pd

from components.data.snapshot import read_snapshot, snapshot_id_of, write_snapshot
from tests.conftest import make_tables

EVENTS = [
    ("u1", "i1", "2026-01-01T10:00:00Z", "view"),
    ("u1", "i2", "2026-01-02T10:00:00Z", "purchase"),
    ("u2", "i1", "2026-01-03T10:00:00Z", "like"),
]


def test_same_content_gives_the_same_snapshot_id_and_folder(tmp_path):
    first = write_snapshot(make_tables(EVENTS), tmp_path)
    second = write_snapshot(make_tables(EVENTS), tmp_path)
    assert first.snapshot_id == second.snapshot_id
    assert [p.name for p in tmp_path.iterdir()] == [first.snapshot_id]
    assert first.manifest["created_at"] == second.manifest["created_at"]  # written once


def test_different_content_gives_a_different_id():
    changed = [*EVENTS[:2], ("u2", "i1", "2026-01-03T10:00:00Z", "save")]
    assert snapshot_id_of(make_tables(EVENTS)) != snapshot_id_of(make_tables(changed))


def test_manifest_records_rows_schema_and_hashes(tmp_path):
    snapshot = write_snapshot(make_tables(EVENTS), tmp_path)
    tables = snapshot.manifest["tables"]
    assert tables["interactions"]["rows"] == 3
    assert tables["items"]["rows"] == 2
    assert tables["interactions"]["schema"]["ts"] == "datetime64[us, UTC]"
    assert len(tables["items"]["hash"]) == 64


def test_round_trip_keeps_canonical_dtypes_and_id(tmp_path):
    original = make_tables(EVENTS)
    snapshot = write_snapshot(original, tmp_path)
    loaded = read_snapshot(tmp_path, snapshot.snapshot_id)
    pd.testing.assert_frame_equal(loaded.interactions, original.interactions)
    assert snapshot_id_of(loaded) == snapshot.snapshot_id
