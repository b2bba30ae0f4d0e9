import pandas as pd
import pytest

from components.store import atomic_directory, atomic_write_text, hash_frame


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "artifact"
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "half.txt").write_text("partial")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_keeps_immutable_targets(tmp_path):
    target = tmp_path / "artifact"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("first")
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("second")
    assert (target / "a.txt").read_text() == "first"
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "a.txt").write_text("third")
    assert (target / "a.txt").read_text() == "third"


def test_atomic_write_text_replaces_whole_files(tmp_path):
    path = tmp_path / "x" / "report.json"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_hash_frame_depends_on_values_and_dtypes_only():
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert hash_frame(frame) == hash_frame(frame.copy())
    assert hash_frame(frame) != hash_frame(frame.assign(a=[1, 3]))
    assert hash_frame(frame) != hash_frame(frame.astype({"a": "float64"}))
