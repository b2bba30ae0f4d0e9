"""Training the ranker on a Dask cluster with LightGBM's own `DaskLGBMRanker`.

Every Dask partition holds whole queries (LightGBM's requirement for ranking): the groups
are cut into contiguous blocks of users, one partition each. `DaskLGBMRanker` has no early
stopping, so the early-stopping users are an eval set and the best round is picked from its
NDCG curve afterwards; the booster is saved truncated there, like the local path.
Categorical columns travel as their integer codes in the ranker's fixed vocabularies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from components.config import RankerConfig
from components.ranking.dataset import QueryGroups
from components.ranking.ranker import TrainedRanker, categorical_codes, lightgbm_params


def _partitions(
    groups: QueryGroups,
    feature_names: Sequence[str],
    categories: dict[str, list[str]],
    n_parts: int,
) -> tuple[Any, Any, Any]:
    import dask.array as da
    import dask.dataframe as dd

    features = categorical_codes(groups.frame[list(feature_names)], categories)
    n_parts = max(1, min(n_parts, groups.n_queries))
    query_blocks = np.array_split(np.arange(groups.n_queries), n_parts)
    row_ends = np.cumsum(groups.sizes)
    frames, labels, sizes = [], [], []
    start = 0
    for block in query_blocks:
        end = int(row_ends[block[-1]])
        frames.append(dd.from_pandas(features.iloc[start:end], npartitions=1))
        labels.append(dd.from_pandas(groups.frame["label"].iloc[start:end], npartitions=1))
        block_sizes = groups.sizes[block]
        sizes.append(da.from_array(block_sizes, chunks=len(block_sizes)))
        start = end
    return dd.concat(frames), dd.concat(labels), da.concatenate(sizes)


def train_ranker_on_dask(
    fit: QueryGroups,
    early_stopping: QueryGroups,
    feature_names: Sequence[str],
    categories: dict[str, list[str]],
    config: RankerConfig,
    client: Any = None,
) -> TrainedRanker:
    """Train on the cluster at `config.dask_address` (or on `client`)."""
    from distributed import Client
    from lightgbm import DaskLGBMRanker

    own_client = client is None
    if own_client:
        if config.dask_address is None:
            raise ValueError("train_ranker_on_dask needs a client or model.ranker.dask_address")
        client = Client(config.dask_address)
    try:
        n_workers = max(1, len(client.scheduler_info()["workers"]))
        x, y, group = _partitions(fit, feature_names, categories, n_workers)
        eval_x, eval_y, eval_group = _partitions(
            early_stopping, feature_names, categories, n_workers
        )
        params = lightgbm_params(config)
        eval_at = params.pop("eval_at")
        params.pop("metric")
        # As a parameter (column indices), so the eval set's Dataset gets it too.
        params["categorical_column"] = [
            position for position, name in enumerate(feature_names) if name in categories
        ]
        model = DaskLGBMRanker(client=client, n_estimators=config.max_rounds, **params)
        started = time.perf_counter()
        model.fit(
            x,
            y,
            group=group,
            eval_set=[(eval_x, eval_y)],
            eval_group=[eval_group],
            eval_at=eval_at,
        )
        seconds = time.perf_counter() - started
        curve = [float(v) for v in model.evals_result_["valid_0"][f"ndcg@{config.eval_at}"]]
    finally:
        if own_client:
            client.close()
    best = int(np.argmax(curve)) + 1 if curve else config.max_rounds
    return TrainedRanker(
        booster=model.booster_,
        feature_names=list(feature_names),
        categories=categories,
        best_iteration=best,
        curves={f"early_stopping.ndcg@{config.eval_at}": curve},
        training_s=round(seconds, 2),
    )
