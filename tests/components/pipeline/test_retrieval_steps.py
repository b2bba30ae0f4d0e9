"""The retrieval phase's candidate step: candidates of the test users in chunks, their
recall, and the stack the evaluated model is assembled on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.config import PipelineConfig
from components.data.split import DataSplit, write_split
from components.pipeline.retrieval_steps import generate_candidates
from components.pipeline.sharding import run_sharded
from components.retrieval.stack import RetrievalStack


def _config(chunk_users: int) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "candidates-step",
            "source": {"kind": "synthetic"},
            "model": {
                "candidates": {
                    "sources": ["covisitation", "popularity", "linear"],
                    "per_source": 30,
                    "n": 40,
                    "chunk_users": chunk_users,
                }
            },
        }
    )


def test_chunks_of_users_give_the_same_candidates_and_recall(
    synthetic_split: DataSplit, tmp_path: Path
) -> None:
    write_split(synthetic_split, tmp_path / "split")
    split_uri = str(tmp_path / "split")
    whole, chunked = (
        run_sharded(
            generate_candidates,
            split_uri=split_uri,
            encoder_uri=None,
            evaluation_index_uri=None,
            candidates=config.model.candidates,
            evaluation=config.evaluation,
            execution=config.execution,
            run_dir=tmp_path / name,
        )
        for config, name in ((_config(4096), "whole"), (_config(9), "chunked"))
    )
    assert chunked["users"] == whole["users"] > 9
    assert chunked["candidate_recall"] == pytest.approx(whole["candidate_recall"], abs=1e-4)
    assert set(whole["candidate_recall"]) == {"covisitation", "popularity", "linear", "combined"}
    key = ["user_id", "rank"]
    left = pd.read_parquet(chunked["uri"]).sort_values(key).reset_index(drop=True)
    right = pd.read_parquet(whole["uri"]).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(left, right)
    # The saved stack is the one that generated them: the evaluated model is built on it.
    stack = RetrievalStack.load(Path(whole["stack_uri"]))
    some = right["user_id"].drop_duplicates().head(5).tolist()
    again = stack.candidates(some).sort_values(key).reset_index(drop=True)
    expected = right[right["user_id"].isin(some)].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(again, expected)
