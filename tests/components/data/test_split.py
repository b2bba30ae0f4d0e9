import pandas as pd
import pytest

from components.config import SplitConfig
from components.data.schema import SPLIT_COLUMN
from components.data.split import SplitError, available_at, read_split, split_tables, write_split
from tests.conftest import make_tables

EVENTS = [(f"u{d % 3}", f"i{d}", f"2026-01-{d:02d}T12:00:00Z", "view") for d in range(1, 31)]


def test_temporal_split_by_duration_orders_windows():
    split = split_tables(make_tables(EVENTS), SplitConfig(valid_duration="7D", test_duration="7D"))
    assert split.test_cutoff == pd.Timestamp("2026-01-23T12:00:00Z")
    assert split.valid_cutoff == pd.Timestamp("2026-01-16T12:00:00Z")
    assert split.train["ts"].max() < split.valid_cutoff <= split.valid["ts"].min()
    assert split.valid["ts"].max() < split.test_cutoff <= split.test["ts"].min()
    assert len(split.train) + len(split.valid) + len(split.test) == 30
    assert len(split.history("test")) == len(split.train) + len(split.valid)
    assert split.history("valid") is split.train


def test_temporal_split_by_fraction_of_time():
    config = SplitConfig(
        valid_fraction=0.2, test_fraction=0.1, valid_duration=None, test_duration=None
    )
    split = split_tables(make_tables(EVENTS), config)
    span = pd.Timedelta(days=29)
    assert split.test_cutoff == pd.Timestamp("2026-01-30T12:00:00Z") - span * 0.1
    assert split.valid_cutoff == split.test_cutoff - span * 0.2


def test_windows_back_never_keeps_the_test_window():
    """The tuning split of `windows_back`: its test window is the real valid window (or an
    earlier one), its windows keep their length, and no interaction at or after the real
    test cut-off survives."""
    real = split_tables(make_tables(EVENTS), SplitConfig(valid_duration="5D", test_duration="5D"))
    one = real.windows_back(1)
    assert one.test_cutoff == real.valid_cutoff
    assert one.test_cutoff - one.valid_cutoff == real.test_cutoff - real.valid_cutoff
    pd.testing.assert_frame_equal(one.test, real.valid)
    for tuning in (one, real.windows_back(2)):
        every = tuning.all_interactions()
        assert every["ts"].max() < real.test_cutoff
        assert len(tuning.tables.interactions) == len(every)
        assert tuning.train["ts"].max() < tuning.valid_cutoff <= tuning.valid["ts"].min()
        assert tuning.valid["ts"].max() < tuning.test_cutoff <= tuning.test["ts"].min()
    assert real.windows_back(2).test_cutoff == real.valid_cutoff - pd.Timedelta("5D")
    with pytest.raises(SplitError, match="fewer windows"):
        real.windows_back(6)
    with pytest.raises(SplitError, match="from 1"):
        real.windows_back(0)


def test_an_empty_window_asks_for_shorter_durations():
    with pytest.raises(SplitError, match="train window empty"):
        split_tables(make_tables(EVENTS), SplitConfig(valid_duration="20D", test_duration="20D"))


def test_only_listings_available_at_the_cutoff_are_recommendable():
    tables = make_tables(
        EVENTS,
        items={
            "i1": {"created_at": "2026-01-01T00:00:00Z", "sold_at": "2026-01-05T00:00:00Z"},
            "i2": {"created_at": "2026-01-01T00:00:00Z"},
            "i3": {"created_at": "2026-01-25T00:00:00Z"},
            "i4": {"created_at": "2026-01-01T00:00:00Z", "sold_at": "2026-01-25T00:00:00Z"},
        },
    )
    items = tables.items.set_index("item_id")
    open_at = available_at(items, pd.Timestamp("2026-01-20T00:00:00Z"))
    assert not open_at["i1"]  # sold before the cut-off
    assert open_at["i2"]
    assert not open_at["i3"]  # listed after the cut-off
    assert open_at["i4"]  # sold after the cut-off: still on sale at it
    assert open_at["i10"]  # unknown dates count as open


def test_fixed_split_passes_through_and_masks_nothing_of_its_own():
    tables = make_tables(EVENTS)
    frame = tables.interactions.copy()
    frame[SPLIT_COLUMN] = ["train"] * 20 + ["valid"] * 5 + ["test"] * 5
    frame["ts"] = pd.NaT
    split = split_tables(tables.replace(interactions=frame), SplitConfig(protocol="fixed"))
    assert (len(split.train), len(split.valid), len(split.test)) == (20, 5, 5)
    assert split.history("test") is split.train  # published protocol: fit on train only
    with pytest.raises(SplitError, match="no timestamps"):
        split_tables(tables.replace(interactions=frame), SplitConfig())
    # Its tuning split scores the valid file in place of the test file, which it drops.
    tuning = split.windows_back(1)
    pd.testing.assert_frame_equal(tuning.test, split.valid)
    assert tuning.history("test") is split.train
    assert len(tuning.tables.interactions) == 25
    assert not tuning.tables.interactions[SPLIT_COLUMN].eq("test").any()
    with pytest.raises(SplitError, match="one window before its test file"):
        split.windows_back(2)


def test_write_and_read_split_round_trip(tmp_path):
    split = split_tables(make_tables(EVENTS), SplitConfig())
    write_split(split, tmp_path / "split")
    loaded = read_split(tmp_path / "split")
    assert loaded.test_cutoff == split.test_cutoff
    pd.testing.assert_frame_equal(loaded.test, split.test)
