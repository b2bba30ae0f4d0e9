"""A small synthetic marketplace split, and a pipeline config for it, shared by ranking tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components.config import PipelineConfig, SplitConfig, SyntheticSourceConfig
from components.data.split import DataSplit, split_tables
from components.data.synthetic import generate_marketplace
from components.pipeline.ranking_steps import assemble_two_stage, build_features
from components.pipeline.sharding import run_sharded


def ranking_data(split_uri: str, config: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """The ranking data stage (`build_features`) run in this process, without an encoder."""
    return run_sharded(
        build_features,
        split_uri=split_uri,
        train_window_encoder_uri=None,
        model=config.model,
        exclude_events=config.evaluation.excluded_events,
        execution=config.execution,
        run_dir=run_dir,
    )


def assembled(
    split_uri: str, ranker_uri: str | None, config: PipelineConfig, run_dir: Path
) -> dict[str, Any]:
    """The evaluation two-stage model (`assemble_two_stage`) without an encoder."""
    return assemble_two_stage(
        split_uri=split_uri,
        encoder_uri=None,
        index_uri=None,
        ranker_uri=ranker_uri,
        model=config.model,
        exclude_events=config.evaluation.excluded_events,
        run_dir=run_dir,
    )


@pytest.fixture(scope="session")
def small_split() -> DataSplit:
    tables = generate_marketplace(SyntheticSourceConfig(n_users=400, n_days=28)).tables
    return split_tables(tables, SplitConfig(valid_duration="5D", test_duration="5D"))


@pytest.fixture(scope="session")
def small_config() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "ranking-test",
            "source": {"kind": "synthetic", "n_users": 400, "n_days": 28},
            "split": {"valid_duration": "5D", "test_duration": "5D"},
            "model": {
                "candidates": {"per_source": 50, "n": 80},
                "ranker": {
                    "max_rounds": 60,
                    "min_data_in_leaf": 20,
                    "max_negatives": 40,
                    "num_threads": 1,
                },
            },
            "evaluation": {"ks": [10, 20], "bootstrap_resamples": 200},
        }
    )
