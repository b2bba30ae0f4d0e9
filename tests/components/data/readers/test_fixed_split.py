"""The fixed-split reader: a small split folder written to tmp_path, plus the shared
ml-1m-lcfn split when it is there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.config import FixedSplitSourceConfig
from components.data.readers.fixed_split import load_fixed_split
from components.data.readers.parsing import SourceError
from components.data.schema import SPLIT_COLUMN
from tests.components.data.source_files import ML_1M_LCFN, assert_canonical, write_fixed_split


def test_fixed_split_small_fixture(tmp_path: Path) -> None:
    folder = write_fixed_split(tmp_path / "split")
    tables = load_fixed_split(FixedSplitSourceConfig(path=folder))
    assert_canonical(tables)
    assert tables.has_fixed_split
    interactions = tables.interactions
    assert interactions[SPLIT_COLUMN].value_counts().to_dict() == {
        "train": 7,
        "valid": 1,
        "test": 3,
    }
    train = interactions[interactions[SPLIT_COLUMN] == "train"]
    assert list(zip(train["user_id"], train["item_id"], strict=True)) == [
        ("0", "1"),
        ("0", "2"),
        ("0", "3"),
        ("1", "2"),
        ("3", "0"),
        ("3", "0"),
        ("3", "4"),
    ]
    assert interactions["ts"].isna().all()
    assert set(interactions["event"]) == {"interaction"}
    assert set(interactions["weight"]) == {1.0}
    assert sorted(tables.users["user_id"], key=int) == ["0", "1", "2", "3"]  # "2" has no items
    assert sorted(tables.items["item_id"], key=int) == ["0", "1", "2", "3", "4", "5", "6"]
    assert tables.source["files"] == {
        "train": "train.txt",
        "valid": "valid.txt",
        "test": "test.txt",
    }


def test_fixed_split_valid_file_is_optional(tmp_path: Path) -> None:
    folder = write_fixed_split(tmp_path / "split", valid=None)
    tables = load_fixed_split(FixedSplitSourceConfig(path=folder))
    assert set(tables.interactions[SPLIT_COLUMN]) == {"train", "test"}
    assert tables.source["files"]["valid"] is None
    none = load_fixed_split(FixedSplitSourceConfig(path=folder, valid_file=None))
    assert len(none.interactions) == len(tables.interactions)
    with pytest.raises(SourceError, match=r"no valid file 'dev\.txt'.*source\.valid_file"):
        load_fixed_split(FixedSplitSourceConfig(path=folder, valid_file="dev.txt"))


def test_fixed_split_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    folder = write_fixed_split(tmp_path / "split")
    (folder / "test.txt").write_text("0 4\n1 5 6\n2 7 x8 9\n")
    with pytest.raises(SourceError) as error:
        load_fixed_split(FixedSplitSourceConfig(path=folder))
    message = str(error.value)
    assert "test.txt line 3" in message and "'x8'" in message
    (folder / "test.txt").write_text("0 4\n1 -5\n")
    with pytest.raises(SourceError, match=r"test\.txt line 2: '-5'"):
        load_fixed_split(FixedSplitSourceConfig(path=folder))
    (folder / "test.txt").write_text("0 4.0\n")
    with pytest.raises(SourceError, match=r"test\.txt line 1: '4\.0'"):
        load_fixed_split(FixedSplitSourceConfig(path=folder))


def test_fixed_split_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_fixed_split(FixedSplitSourceConfig(path=tmp_path / "nowhere"))
    folder = write_fixed_split(tmp_path / "split")
    (folder / "test.txt").write_text("")
    with pytest.raises(SourceError, match=r"test\.txt is empty"):
        load_fixed_split(FixedSplitSourceConfig(path=folder))
    (folder / "test.txt").unlink()
    with pytest.raises(SourceError, match=r"no test file 'test\.txt'.*files present"):
        load_fixed_split(FixedSplitSourceConfig(path=folder))


@pytest.mark.needs_shared_data
@pytest.mark.skipif(not ML_1M_LCFN.is_dir(), reason=f"ml-1m-lcfn not found at {ML_1M_LCFN}")
def test_fixed_split_real_ml_1m_lcfn_counts_and_speed() -> None:
    started = time.perf_counter()
    tables = load_fixed_split(FixedSplitSourceConfig(path=ML_1M_LCFN))
    elapsed = time.perf_counter() - started
    counts = tables.interactions[SPLIT_COLUMN].value_counts().to_dict()
    assert counts == {"train": 796_244, "valid": 99_455, "test": 99_455}
    assert len(tables.users) == 6_022 and len(tables.items) == 3_043
    assert tables.interactions["user_id"].nunique() == 6_022
    assert elapsed < 10, f"ml-1m-lcfn took {elapsed:.1f} s to load"
