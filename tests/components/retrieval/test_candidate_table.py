"""Candidates generated once and read back: the table answers exactly what the stack's
sources would, so the evaluation can read the run's test candidates instead of running
every source again."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.config import PipelineConfig
from components.data.split import DataSplit
from components.retrieval.candidate_arrays import MergedCandidates
from components.retrieval.candidate_table import CandidateTable
from components.retrieval.stack import RetrievalStack
from components.store import ParquetAppender


def _stack(split: DataSplit) -> RetrievalStack:
    config = PipelineConfig.model_validate(
        {
            "name": "candidate-table",
            "source": {"kind": "synthetic"},
            "model": {
                "candidates": {
                    "sources": ["covisitation", "popularity", "linear"],
                    "per_source": 30,
                    "n": 40,
                }
            },
        }
    )
    return RetrievalStack.fit(
        split.history("test"),
        split.tables.items,
        split.test_cutoff,
        split.available_items(split.test_cutoff),
        config.model.candidates,
        config.evaluation.excluded_events,
    )


def _assert_same(left: MergedCandidates, right: MergedCandidates) -> None:
    assert left.source_names == right.source_names
    for name in ("user_ids", "item_ids", "score", "rank", "n_sources"):
        np.testing.assert_array_equal(getattr(left, name), getattr(right, name))
    np.testing.assert_array_equal(left.source_scores, right.source_scores)
    np.testing.assert_array_equal(left.source_ranks, right.source_ranks)


def test_a_table_read_back_from_parquet_answers_what_the_sources_would(
    synthetic_split: DataSplit, tmp_path, monkeypatch
) -> None:
    stack = _stack(synthetic_split)
    users = synthetic_split.test["user_id"].drop_duplicates().astype(str).tolist()
    # Written as the candidates stage does: a chunk of users at a time.
    with ParquetAppender(tmp_path / "test.parquet") as writer:
        for start in range(0, len(users), 40):
            writer.write(stack.candidates(users[start : start + 40]))
    table = CandidateTable.read(tmp_path / "test.parquet")
    whole = CandidateTable.from_frame(pd.read_parquet(tmp_path / "test.parquet"))
    _assert_same(table.merged, whole.merged)
    assert len(users) > 80 and len(table.merged) == len(whole.merged)
    # Another batch, in another order: each user's rows, in the batch's user order.
    batch = users[::-3][:50]
    fresh = stack.candidate_arrays(batch)
    _assert_same(table.take(batch), fresh)
    # Served from the table, the stack gives the same answer without running its sources.
    stack.serve_known_candidates(table)

    def no_sources(user_ids):
        raise AssertionError("the sources ran for users the table holds")

    monkeypatch.setattr(stack, "source_arrays", no_sources)
    _assert_same(stack.candidate_arrays(batch), fresh)


def test_a_user_outside_the_table_sends_the_whole_batch_to_the_sources(
    synthetic_split: DataSplit,
) -> None:
    stack = _stack(synthetic_split)
    users = synthetic_split.test["user_id"].drop_duplicates().astype(str).tolist()
    table = CandidateTable.from_frame(stack.candidates(users[:20]))
    assert table.take([users[0], users[30]]) is None
    stack.serve_known_candidates(table)
    batch = [users[0], users[30]]
    _assert_same(stack.candidate_arrays(batch), _stack(synthetic_split).candidate_arrays(batch))


def test_rows_not_grouped_by_user_are_refused(synthetic_split: DataSplit) -> None:
    frame = _stack(synthetic_split).candidates(
        synthetic_split.test["user_id"].drop_duplicates().astype(str).tolist()[:3]
    )
    shuffled = frame.sample(frac=1.0, random_state=0)
    with pytest.raises(ValueError, match="grouped by user"):
        CandidateTable.from_frame(shuffled)
