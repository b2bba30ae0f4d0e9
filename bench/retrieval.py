"""Retrieval benchmark: two-tower training, Annoy build/query, ANN recall vs exact, and
Recall@20 / NDCG@20 / candidate Recall@N per source and combined, per dataset.

    .venv/bin/python bench/retrieval.py                       # synthetic and ml-1m-lcfn
    .venv/bin/python bench/retrieval.py --only synthetic

Runs the retrain flow's retrieval steps in-process (nothing is registered); the two-tower
source is added to a config that lacks it. Temporal datasets also get the cold-start
figure: positives on listings created inside the test window, two-tower vs popularity on
the same positives.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from components.config import load_config  # noqa: E402
from components.data.split import read_split  # noqa: E402
from components.evaluation.baselines import fit_baselines  # noqa: E402
from components.evaluation.cold_start import cold_start_task  # noqa: E402
from components.evaluation.protocol import evaluate_scorer  # noqa: E402
from components.evaluation.suite import evaluate_models  # noqa: E402
from components.pipeline import chain, retrieval_steps  # noqa: E402
from components.retrieval.popularity import RecentPopularity  # noqa: E402

DATASETS = ("synthetic", "ml-1m-lcfn", "movielens-100k", "gowalla")
HEADLINE = ("recall@20", "ndcg@20", "recall@100")


def run_dataset(name: str, scratch: Path) -> dict[str, Any]:
    config = load_config(REPO / "configs" / f"{name}.yaml")
    sources = config.model.candidates.sources
    if "two_tower" not in sources:
        config = load_config(
            REPO / "configs" / f"{name}.yaml",
            {"model.candidates.sources": ["two_tower", *sources]},
        )
    run_dir = scratch / name
    stages = chain.Stages()
    data_phase = chain.data_phase(config, run_dir, scratch / "snapshots", stages)
    retrieval = chain.retrieval_phase(config, data_phase.split_uri, run_dir, stages)
    split, encoder, indexes = data_phase.split, retrieval.encoder, retrieval.indexes
    candidates = retrieval.candidates
    assert encoder is not None and indexes is not None  # two_tower is among the sources
    started = time.perf_counter()
    data = read_split(Path(split["uri"]))
    scorers = {
        "two_tower": retrieval_steps.two_tower_scorer(encoder["uri"], data),
        **fit_baselines(data.history("test"), config.evaluation.baselines, data.test_cutoff),
    }
    evaluation = evaluate_models("two_tower", scorers, data, "test", config.evaluation)
    evaluation_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "dataset": name,
        "protocol": split["protocol"],
        "encoder_training_s": encoder["training_s"],
        "encoder_epochs": len(encoder["epochs"]),
        "index": indexes["figures"],
        "candidate_recall": candidates["candidate_recall"],
        "candidate_n": candidates["n"],
        "candidate_generation_s": candidates["generation_s"],
        "two_tower": {k: round(evaluation.model.metrics[k], 4) for k in HEADLINE},
        "baselines": {
            b: {k: round(m[k], 4) for k in HEADLINE}
            for b, m in evaluation.baseline_metrics().items()
        },
        "evaluation_s": round(evaluation_s, 1),
    }
    if split["protocol"] == "temporal":
        result["cold_start"] = cold_start(split["uri"], encoder["uri"], config)
    return result


def cold_start(split_uri: str, encoder_uri: str, config: Any) -> dict[str, Any]:
    data = read_split(Path(split_uri))
    task = cold_start_task(data, config.evaluation)
    two_tower = retrieval_steps.two_tower_scorer(encoder_uri, data)
    popularity = RecentPopularity.fit(
        data.history("test"), config.evaluation.baselines.popularity, data.test_cutoff
    )
    ks = (20, 100)
    ours = evaluate_scorer(two_tower, task, ks).metrics
    theirs = evaluate_scorer(popularity, task, ks).metrics
    return {
        "users": task.n_users,
        "two_tower_recall@100": round(ours["recall@100"], 4),
        "popularity_recall@100": round(theirs["recall@100"], 4),
        "ratio": (
            round(ours["recall@100"] / theirs["recall@100"], 1)
            if theirs["recall@100"] > 0
            else ("inf" if ours["recall@100"] > 0 else None)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=DATASETS, action="append")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.only or DATASETS[:2]:
            try:
                result = run_dataset(name, Path(scratch))
            except Exception as error:  # a missing shared folder is a skip, not a crash
                if "does not exist" in str(error) or "not found" in str(error):
                    print(f"{name}: skipped ({error})")
                    continue
                raise
            results.append(result)
            print(json.dumps(result, indent=2, default=str), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
