"""The Dask path: DaskLGBMRanker on a real LocalCluster matches the local ranker's NDCG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import PipelineConfig
from components.pipeline.ranking_steps import feature_builder_categories
from components.ranking.dataset import query_groups, split_users
from components.ranking.features import feature_columns
from components.ranking.ranker import train_ranker
from tests.components.ranking.conftest import ranking_data

pytestmark = pytest.mark.slow


def ndcg_at(scores: np.ndarray, labels: np.ndarray, sizes: np.ndarray, k: int) -> float:
    """Mean NDCG@k over queries with gains 2^label - 1 (LightGBM's definition)."""
    values, start = [], 0
    for size in sizes:
        rel = labels[start : start + size].astype(float)
        order = np.argsort(-scores[start : start + size], kind="stable")[:k]
        discounts = 1 / np.log2(np.arange(2, k + 2))
        dcg = ((2 ** rel[order] - 1) * discounts[: len(order)]).sum()
        ideal = np.sort(rel)[::-1][:k]
        idcg = ((2**ideal - 1) * discounts[: len(ideal)]).sum()
        values.append(dcg / idcg if idcg > 0 else 1.0)
        start += size
    return float(np.mean(values))


def test_dask_ranker_matches_the_local_ranker(
    small_split, small_config: PipelineConfig, tmp_path
) -> None:
    from components.data.split import write_split

    distributed = pytest.importorskip("distributed")
    from components.ranking.distributed import train_ranker_on_dask

    write_split(small_split, tmp_path / "split")
    data = ranking_data(str(tmp_path / "split"), small_config, tmp_path)
    frame = pd.read_parquet(data["uri"])
    config = small_config.model.ranker
    fit_users, _ = split_users(frame["user_id"], config.early_stopping_user_share, config.seed)
    in_fit = frame["user_id"].isin(fit_users).to_numpy()
    fit = query_groups(frame[in_fit], config, seed=config.seed)
    stop = query_groups(frame[~in_fit], config, seed=config.seed, sample_negatives=False)
    names = [c for c in feature_columns(frame) if frame[c].notna().any()]
    categories = feature_builder_categories(frame)

    local = train_ranker(fit, stop, names, categories, config)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        remote = train_ranker_on_dask(fit, stop, names, categories, config, client=client)

    labels = stop.frame["label"].to_numpy()
    local_ndcg = ndcg_at(local.predict(stop.frame), labels, stop.sizes, config.eval_at)
    remote_ndcg = ndcg_at(remote.predict(stop.frame), labels, stop.sizes, config.eval_at)
    assert remote.best_iteration >= 1 and not remote.booster.pandas_categorical
    assert remote_ndcg > 0.05
    assert abs(remote_ndcg - local_ndcg) < 0.05, (local_ndcg, remote_ndcg)


def test_an_ensemble_trains_every_member_on_the_cluster_at_dask_address(
    small_split, small_config: PipelineConfig, tmp_path, monkeypatch
) -> None:
    """`model.ranker.dask_address` with `ensemble_size` 2 through the flow's step: each
    member trains on that cluster with its own seed, and the averaged model saves and loads."""
    from components.data.split import write_split

    distributed = pytest.importorskip("distributed")
    from components.pipeline.ranking_steps import train_ranker
    from components.ranking import distributed as dask_path
    from components.ranking.ranker import RankerEnsemble, load_ranker

    write_split(small_split, tmp_path / "split")
    data = ranking_data(str(tmp_path / "split"), small_config, tmp_path)
    seeds: list[int] = []
    real = dask_path.train_ranker_on_dask

    def spy(*args, **kwargs):
        seeds.append(args[4].seed)
        return real(*args, **kwargs)

    monkeypatch.setattr(dask_path, "train_ranker_on_dask", spy)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        ranker = small_config.model.ranker.model_copy(
            update={"dask_address": cluster.scheduler_address, "ensemble_size": 2}
        )
        result = train_ranker(data["uri"], ranker, tmp_path)
    assert seeds == [ranker.seed, ranker.seed + 1]
    figures = result["figures"]
    assert figures["ensemble_size"] == 2 and len(figures["member_best_iterations"]) == 2
    loaded = load_ranker(Path(result["uri"]))
    assert isinstance(loaded, RankerEnsemble)
    frame = pd.read_parquet(data["uri"]).head(500)
    first, second = (member.predict(frame) for member in loaded.members)
    assert not np.allclose(first, second)
    np.testing.assert_allclose(loaded.predict(frame), (first + second) / 2, rtol=1e-6)
