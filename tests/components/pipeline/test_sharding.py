"""Per-user stages in shards (components.pipeline.sharding): whatever the number of shards,
the same candidates, label-stage rows and figures, and evaluation metrics, to the last digit,
as one shard (one loop over every user)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components.config import PipelineConfig, SplitConfig, SyntheticSourceConfig
from components.data.split import DataSplit, split_tables, write_split
from components.data.synthetic import generate_marketplace
from components.pipeline import evaluation_steps, ranking_steps, retrieval_steps
from components.pipeline.chain import Stages
from components.pipeline.sharding import RecallSums, chunk_starts, run_sharded, shard_ranges
from components.retrieval.candidate_recall import ChunkedRecall


def _config(shard_users: int, chunk_users: int = 2048, label_windows: int = 1) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "sharding",
            "source": {"kind": "synthetic"},
            "model": {
                "candidates": {
                    "sources": ["covisitation", "popularity", "linear"],
                    "per_source": 30,
                    "n": 40,
                    "chunk_users": chunk_users,
                },
                "ranker": {"label_windows": label_windows, "max_negatives": 20},
            },
            "evaluation": {"ks": [10, 20, 100], "bootstrap_resamples": 50},
            "execution": {"shard_users": shard_users},
        }
    )


@pytest.fixture(scope="module")
def split_uri(synthetic_split: DataSplit, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("sharding") / "split"
    write_split(synthetic_split, folder)
    return str(folder)


def test_shards_are_whole_chunks_and_cover_every_user_once() -> None:
    shards = shard_ranges(10_000, 5_000, 2048)
    assert [(s["start"], s["stop"]) for s in shards] == [(0, 4096), (4096, 8192), (8192, 10_000)]
    assert [s["number"] for s in shards] == [0, 1, 2]
    assert list(chunk_starts(shards[1], 2048)) == [4096, 6144]
    # Smaller than a chunk: the shard is the unit; no users: one empty shard, one empty chunk.
    assert [(s["start"], s["stop"]) for s in shard_ranges(5, 2, 4)] == [(0, 2), (2, 4), (4, 5)]
    assert shard_ranges(0, 100, 10, label_stage=1) == [
        {"number": 0, "start": 0, "stop": 0, "label_stage": 1}
    ]
    assert list(chunk_starts({"start": 0, "stop": 0}, 10)) == [0]


def test_recall_sums_replay_chunked_recall_to_the_last_bit() -> None:
    rng = np.random.default_rng(3)
    chunks = [
        {"users": int(rng.integers(1, 50)), "recall": {"a": float(rng.random()), "b": 0.1}}
        for _ in range(40)
    ]
    mine = RecallSums().replay(chunks[:17]).replay(chunks[17:])
    theirs = ChunkedRecall(10)
    for chunk in chunks:
        users = chunk["users"]
        for name, value in chunk["recall"].items():
            theirs._sums[name] = theirs._sums.get(name, 0.0) + value * users
        theirs._users += users
    assert mine.result() == theirs.result()
    assert mine._sums == theirs._sums


def _candidates(split_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """The candidate stage run in this process, without the two-tower source."""
    return run_sharded(
        retrieval_steps.generate_candidates,
        split_uri=split_uri,
        encoder_uri=None,
        evaluation_index_uri=None,
        candidates=config.model.candidates,
        evaluation=config.evaluation,
        execution=config.execution,
        run_dir=run_dir,
    )


def test_candidates_in_shards_are_one_loop_s_candidates_and_recall(
    split_uri: str, tmp_path: Path
) -> None:
    whole = _candidates(split_uri, _config(10**6, 16), tmp_path / "a")
    sharded = _candidates(split_uri, _config(40, 16), tmp_path / "b")
    assert sharded["candidate_recall"] == whole["candidate_recall"]
    assert sharded["users"] == whole["users"] > 40 * 2
    assert len(list((tmp_path / "b" / "shards" / "generate_candidates").iterdir())) > 2
    pd.testing.assert_frame_equal(pd.read_parquet(sharded["uri"]), pd.read_parquet(whole["uri"]))


def test_label_stage_rows_and_figures_in_shards_are_one_loop_s(tmp_path: Path) -> None:
    """Two label windows (each its own stack), shards across both: the rows in one loop's
    order, the same figures."""
    tables = generate_marketplace(SyntheticSourceConfig(n_users=300, n_days=28)).tables
    write_split(
        split_tables(tables, SplitConfig(valid_duration="5D", test_duration="5D")),
        tmp_path / "split",
    )
    split_uri = str(tmp_path / "split")
    whole, sharded = (
        run_sharded(
            ranking_steps.build_features,
            split_uri=split_uri,
            train_window_encoder_uri=None,
            model=config.model,
            exclude_events=config.evaluation.excluded_events,
            execution=config.execution,
            run_dir=tmp_path / name,
        )
        for config, name in ((_config(10**6, 16, 2), "a"), (_config(32, 16, 2), "b"))
    )
    frame = pd.read_parquet(sharded["uri"])
    pd.testing.assert_frame_equal(frame, pd.read_parquet(whole["uri"]))
    assert set(frame["label_window"]) == {0, 1}
    untimed = [{k: v for k, v in r["figures"].items() if k != "seconds"} for r in (sharded, whole)]
    assert untimed[0] == untimed[1]
    assert untimed[0]["label_windows"] == 2 and untimed[0]["rows"] == len(frame)
    assert len(list((tmp_path / "b" / "shards" / "build_features").iterdir())) > 4


def test_evaluation_in_shards_gives_one_pass_s_metrics_and_intervals(
    split_uri: str, tmp_path: Path
) -> None:
    config = _config(25)
    candidates = _candidates(split_uri, config, tmp_path)
    model = ranking_steps.assemble_two_stage(
        split_uri=split_uri,
        encoder_uri=None,
        index_uri=None,
        ranker_uri=None,
        model=config.model,
        exclude_events=config.evaluation.excluded_events,
        run_dir=tmp_path,
        stack_uri=candidates["stack_uri"],
    )
    results = []
    for shard_users in (10**6, 25):
        execution = config.execution.model_copy(update={"shard_users": shard_users})
        stages = Stages()
        results.append(
            stages.sharded(
                evaluation_steps.evaluate,
                split_uri=split_uri,
                evaluation_model_uri=model["uri"],
                candidates_uri=candidates["uri"],
                config=config.evaluation,
                execution=execution,
                run_dir=tmp_path / f"run-{shard_users}",
            )
        )
        assert set(stages.timings_s) == {"evaluate"}
    whole, sharded = results
    assert len(list((tmp_path / "run-25" / "shards" / "evaluate").iterdir())) > 2
    for key in ("metrics", "baselines", "comparisons", "segments", "evaluated_users"):
        assert sharded[key] == whole[key], key
    pd.testing.assert_frame_equal(
        pd.read_parquet(Path(sharded["uri"]) / "per_user.parquet"),
        pd.read_parquet(Path(whole["uri"]) / "per_user.parquet"),
    )
