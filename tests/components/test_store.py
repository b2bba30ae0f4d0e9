import errno
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.settings import RewearSettings
from components.store import (
    StorageError,
    atomic_directory,
    atomic_write_text,
    hash_frame,
    storage_error,
)


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


def _failing(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[-1]) if args else None)

    return fail


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        (errno.ENOSPC, "No space left on device; the disk is full: free space"),
        (errno.EROFS, "Read-only file system; the file system is read-only: point REWEAR_HOME"),
        (errno.EACCES, "Permission denied; permission denied: make the folder writable"),
    ],
)
def test_a_write_no_retry_can_fix_names_the_path_and_the_fix(tmp_path, code, advice):
    target = tmp_path / "runs" / "r1" / "split"
    with pytest.raises(StorageError) as raised, atomic_directory(target) as staging:
        _failing(code)(staging / "split.json")
    message = str(raised.value)
    assert message.startswith(f"cannot write {staging / 'split.json'} (while writing {target})")
    assert advice in message
    # Not an OSError: the flows' retry of transient I/O errors leaves it alone.
    assert not isinstance(raised.value, OSError)
    assert list((tmp_path / "runs" / "r1").iterdir()) == []


def test_a_full_disk_inside_copytree_is_found_in_shutils_error_list(tmp_path, monkeypatch):
    source = tmp_path / "encoder"
    (source / "nested").mkdir(parents=True)
    (source / "weights.bin").write_bytes(b"x")
    (source / "nested" / "vocab.json").write_text("{}")
    monkeypatch.setattr(shutil, "copyfile", _failing(errno.ENOSPC))  # what copy2 calls
    target = tmp_path / "bundle"
    with pytest.raises(StorageError) as raised, atomic_directory(target) as staging:
        shutil.copytree(source, staging / "encoder")
    message = str(raised.value)
    assert message.startswith(f"cannot write {staging / 'encoder'}")
    assert "No space left on device; the disk is full" in message
    assert isinstance(raised.value.__cause__, shutil.Error)
    assert not target.exists()


def test_other_os_errors_pass_through_unchanged(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_directory(tmp_path / "t") as staging:
        (staging / "missing" / "x.txt").read_text()
    failure = OSError(errno.EIO, "Input/output error")
    assert storage_error(failure, tmp_path) is None


def test_atomic_write_text_on_a_read_only_file_system(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _failing(errno.EROFS))
    path = tmp_path / "runs" / "report.json"
    with pytest.raises(StorageError, match=r"report\.json: Read-only file system; .*REWEAR_HOME"):
        atomic_write_text(path, "{}")
    assert list(path.parent.iterdir()) == []  # the temporary sibling is gone


def test_a_read_only_home_fails_at_start_naming_it(tmp_path, monkeypatch):
    home = tmp_path / "home"
    RewearSettings(home=home).ensure()  # a writable home: created, probed, nothing left
    assert sorted(p.name for p in home.iterdir()) == ["mlartifacts", "runs", "snapshots"]
    monkeypatch.setattr(tempfile, "TemporaryFile", _failing(errno.EROFS))
    with pytest.raises(StorageError) as raised:
        RewearSettings(home=home).ensure()
    assert str(raised.value).startswith(
        f"cannot write {home}: Read-only file system; the file system is read-only: point "
        "REWEAR_HOME at a writable folder"
    )


def test_the_flows_do_not_retry_a_storage_error():
    from flows.task_options import retry_on_io_error

    class Failed:
        def __init__(self, error):
            self.error = error

        def result(self):
            raise self.error

    full = storage_error(OSError(errno.ENOSPC, "No space left on device", "/x"), Path("/x"))
    assert retry_on_io_error(None, None, Failed(full)) is False
    assert retry_on_io_error(None, None, Failed(OSError(errno.EIO, "I/O error"))) is True


def test_read_parquet_rows_gives_the_rows_asked_in_their_order_across_row_groups(tmp_path):
    from components.store import ParquetAppender, read_parquet_rows

    frame = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(50)],
            "value": np.arange(50, dtype=float),
            "kind": pd.Categorical(["a", "b"] * 25, categories=["a", "b", "c"]),
        }
    )
    with ParquetAppender(tmp_path / "rows.parquet") as appender:
        for start in range(0, 50, 7):  # 8 row groups
            appender.write(frame.iloc[start : start + 7])
    rows = np.array([49, 0, 13, 7, 6, 48, 13])
    others = np.array([3, 1, 2])
    first, second, empty = read_parquet_rows(
        tmp_path / "rows.parquet", rows, others, np.array([], dtype=int)
    )
    pd.testing.assert_frame_equal(first, frame.take(rows).reset_index(drop=True))
    pd.testing.assert_frame_equal(second, frame.take(others).reset_index(drop=True))
    assert empty.empty


def test_columns_with_values_reads_null_counts_and_falls_back_to_the_data(tmp_path):
    import pyarrow.parquet as pq

    from components.store import ParquetAppender, columns_with_values

    with ParquetAppender(tmp_path / "with.parquet") as writer:
        writer.write(pd.DataFrame({"a": [np.nan, np.nan], "b": [np.nan, np.nan], "c": ["x", None]}))
        writer.write(pd.DataFrame({"a": [1.0, np.nan], "b": [np.nan, np.nan], "c": [None, None]}))
    pq.write_table(
        pq.read_table(tmp_path / "with.parquet"),
        tmp_path / "without.parquet",
        write_statistics=False,
    )

    for name in ("with.parquet", "without.parquet"):
        assert columns_with_values(tmp_path / name, ["c", "b", "a"]) == ["c", "a"]


def test_concurrent_writers_of_one_content_addressed_folder_keep_one_intact_copy(tmp_path):
    target = tmp_path / "snapshots" / "abc"
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            with atomic_directory(target) as staging:
                (staging / "part.txt").write_text("same content\n")
                barrier.wait()  # all four rename at about the same time
                time.sleep(0.01 * n)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in target.iterdir()) == ["part.txt"]
    assert sorted(p.name for p in Path(tmp_path / "snapshots").iterdir()) == ["abc"]
