"""Input fingerprints, task-runner settings and concurrent writes to one snapshot id."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.config import InteractionsFileSourceConfig, SyntheticSourceConfig
from components.fingerprints import code_fingerprint, source_fingerprint
from components.settings import OrchestrationSettings
from components.store import atomic_directory


def test_source_fingerprint_changes_when_a_source_file_is_rewritten(tmp_path):
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,ts\nu1,i1,1\n")
    source = InteractionsFileSourceConfig(interactions=events)
    first = source_fingerprint(source)
    assert source_fingerprint(source) == first
    events.write_text("user_id,item_id,ts\nu1,i1,1\nu2,i1,2\n")
    assert source_fingerprint(source) != first
    stat = events.stat()
    os.utime(events, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert source_fingerprint(source) != first
    # The synthetic generator's data is a function of its config alone.
    assert source_fingerprint(SyntheticSourceConfig()) == source_fingerprint(
        SyntheticSourceConfig(seed=8)
    )
    assert len(code_fingerprint()) == 64


def test_task_runner_settings_refuse_an_address_without_dask(monkeypatch):
    monkeypatch.setenv("REWEAR_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    with pytest.raises(ValidationError, match="REWEAR_TASK_RUNNER=dask"):
        OrchestrationSettings()
    monkeypatch.setenv("REWEAR_TASK_RUNNER", "dask")
    assert OrchestrationSettings().dask_address == "tcp://127.0.0.1:8786"
    monkeypatch.setenv("REWEAR_TASK_RUNNER", "ray")
    with pytest.raises(ValidationError, match="thread_pool"):
        OrchestrationSettings()


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
