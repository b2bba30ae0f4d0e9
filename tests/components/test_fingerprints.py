"""Input fingerprints: what the source stage's cache key and the run's lineage read."""

from __future__ import annotations

import os

from components.config import InteractionsFileSourceConfig, SyntheticSourceConfig
from components.fingerprints import code_fingerprint, source_fingerprint


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
