"""Quality benchmark: run the pipeline's data and evaluation steps on every dataset and
write `docs/benchmarks.md` (our numbers beside the baselines and the published anchors).

    .venv/bin/python bench/quality.py                 # all datasets
    .venv/bin/python bench/quality.py --only ml-1m-lcfn

Nothing is registered: this measures the components, not the registry. Datasets whose
folder is missing (../shared/data) are skipped with a note.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from components.config import load_config  # noqa: E402
from components.data.split import read_split  # noqa: E402
from components.evaluation.protocol import build_evaluation_task, evaluate_scorer  # noqa: E402
from components.evaluation.summary import fairness_rows, markdown_table, summary_rows  # noqa: E402
from components.pipeline import chain  # noqa: E402
from components.pipeline.report import RunReport  # noqa: E402
from components.retrieval.popularity import RecentPopularity  # noqa: E402

DATASETS = ("synthetic", "movielens-100k", "ml-1m-lcfn", "gowalla")
#: Published Recall@20 / NDCG@20 on ml-1m-lcfn (EVALUATION.md); ours tune on valid only.
ANCHORS = {
    "ml-1m-lcfn": [
        ("LightGCN (published)", 0.2576, 0.2427),
        ("UltraGCN (published)", 0.2787, 0.2642),
        ("SimpleX (published)", 0.2802, 0.2670),
        ("EASE λ=500, measured here (shared/data README)", 0.2759, 0.2660),
        ("popularity, measured here (issue 5)", 0.1160, 0.1176),
    ],
    "gowalla": [
        ("YouTubeDNN-style two-tower (published, BARS)", 0.1754, 0.1473),
        ("EASE (published, BARS)", 0.1765, 0.1467),
        ("LightGCN (published)", 0.1830, 0.1554),
        ("GF-CF (published)", 0.1849, 0.1518),
        ("UltraGCN (published)", 0.1862, 0.1580),
        ("SimpleX (published)", 0.1872, 0.1557),
        ("BSPM (published)", 0.1920, 0.1597),
    ],
}


def run_dataset(
    name: str, scratch: Path, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The retrain's chain up to evaluation (`components.pipeline.chain`), on the dataset's
    config: nothing is registered."""
    config = load_config(REPO / "configs" / f"{name}.yaml", overrides)
    run_dir = scratch / name
    rss_before_mb: dict[str, float] = {}

    def progress(stage: str, step: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            rss_before_mb[stage] = _rss_mb()
            started = time.perf_counter()
            result = step(*args, **kwargs)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            seconds = time.perf_counter() - started
            print(f"{name}: {stage} {seconds:.1f} s (process peak RSS {peak:.0f} MB)", flush=True)
            return result

        return call

    stages = chain.Stages(wrap=progress)
    report = RunReport.start(f"bench-{name}", config)
    data = chain.data_phase(config, run_dir, scratch / "snapshots", stages)
    retrieval = chain.retrieval_phase(config, data.split_uri, run_dir, stages)
    ranking = chain.ranking_phase(config, data.split_uri, retrieval, run_dir, stages)
    evaluation = chain.evaluation_phase(config, data.split_uri, retrieval, ranking, run_dir, stages)
    report.record_data(data)
    report.record_retrieval(retrieval)
    report.record_ranking(ranking)
    report.record_evaluation(evaluation)
    data_split = read_split(Path(data.split_uri))
    task = build_evaluation_task(data_split, "test", config.evaluation)
    popularity = RecentPopularity.fit(
        data_split.history("test"), config.evaluation.baselines.popularity, data_split.test_cutoff
    )
    started = time.perf_counter()
    evaluate_scorer(popularity, task, config.evaluation.ks)
    full_ranking_s = time.perf_counter() - started
    return {
        "name": name,
        "report": report.model_dump(mode="json"),
        "rss_before_ranker_mb": rss_before_mb.get("train_ranker"),
        "timings": stages.timings_s,
        "full_ranking_s": full_ranking_s,
        "n_items": len(task.item_ids),
    }


def _rss_mb() -> float:
    """Current resident memory of this process (Linux), MB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def render(results: list[dict[str, Any]], skipped: list[str]) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        "# rewear benchmarks",
        "",
        f"Generated by `bench/quality.py` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC}, commit "
        f"`{commit}`, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{memory_gib:.0f} GiB, Python {platform.python_version()}. Full-ranking evaluation "
        "on the test window (temporal) or test file (fixed split); `model` is the full "
        "pipeline (candidates from every source re-ranked by LightGBM), `retrieval_only` the "
        "same candidates in fusion order; baselines are fitted on the same history. "
        "Δ: model − baseline, paired bootstrap over users, 95% interval.",
        "",
    ]
    for result in results:
        report = result["report"]
        evaluation = report
        split = report["split"]
        lines += [
            f"## {result['name']} ({split['protocol']})",
            "",
            f"{evaluation['evaluated_users']} evaluated users, {result['n_items']} items; "
            f"rows train/valid/test {split['rows']}.",
            "",
            markdown_table(
                summary_rows(
                    evaluation["metrics"], evaluation["baselines"], evaluation["comparisons"]
                )
            ),
            "",
            markdown_table(fairness_rows(evaluation["metrics"], evaluation["baselines"], 20)),
            "",
        ]
        anchors = ANCHORS.get(result["name"])
        if anchors:
            lines += ["Published anchors (Recall@20 / NDCG@20):", ""]
            lines += [f"- {label}: {recall:.4f} / {ndcg:.4f}" for label, recall, ndcg in anchors]
            lines.append("")
        retrieval = report["retrieval"]
        if "encoder_training_s" in retrieval:
            ann = next((f"{k} {v}" for k, v in retrieval.items() if k.startswith("ann_recall")), "")
            lines += [
                f"Two-tower: trained in {retrieval['encoder_training_s']:.1f} s "
                f"({len(retrieval['encoder_epochs'])} epochs, fit and refit); Annoy index of "
                f"{retrieval['evaluation_items']:,} listings, {ann} vs exact search.",
                "",
            ]
        recall = ", ".join(f"{k} {v:.4f}" for k, v in report["candidate_recall"].items())
        lines += [f"Candidate recall on the test window: {recall}.", ""]
        ranking = report["ranking"]
        if ranking:
            top_features = list(ranking["importance"])[:8]
            lines += [
                f"Ranker: {ranking['fit_rows']:,} training rows (of "
                f"{ranking['label_stage']['rows']:,} "
                f"label-stage candidates), best iteration {ranking['best_iteration']}, "
                f"trained in {ranking['training_s']:.1f} s; process peak RSS "
                f"{ranking['peak_rss_mb']:.0f} MB ({result['rss_before_ranker_mb']:.0f} MB before "
                f"the ranker stage). Top features by gain: {', '.join(top_features)}.",
                "",
            ]
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in result["timings"].items())
        lines += [
            f"Timings: {timings}; one full-ranking evaluation of all "
            f"{evaluation['evaluated_users']} users (popularity): "
            f"{result['full_ranking_s']:.2f} s.",
            "",
        ]
    for name in skipped:
        lines += [f"## {name}", "", "Skipped: its data folder is missing.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=DATASETS, action="append")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        help="config override key=value (for tuning: write with --out elsewhere), e.g. "
        "source.path=../../shared/data/gowalla/tune (relative to configs/) --set "
        "source.test_file=valid.txt",
    )
    args = parser.parse_args()
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s", level=logging.WARNING)
    logging.getLogger("components").setLevel(logging.INFO)  # encoder epochs, refits
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    results, skipped = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.only or DATASETS:
            try:
                result = run_dataset(name, Path(scratch), overrides)
            except Exception as error:  # a missing shared folder is a skip, not a crash
                if "does not exist" in str(error) or "not found" in str(error):
                    print(f"{name}: skipped ({error})")
                    skipped.append(name)
                    continue
                raise
            results.append(result)
            metrics = result["report"]["metrics"]
            print(
                f"{name}: model recall@20 {metrics['recall@20']:.4f} ndcg@20 "
                f"{metrics['ndcg@20']:.4f}; baselines "
                + ", ".join(
                    f"{b} {m['recall@20']:.4f}/{m['ndcg@20']:.4f}"
                    for b, m in result["report"]["baselines"].items()
                )
                + f"; full ranking {result['full_ranking_s']:.2f} s; "
                + ", ".join(f"{k} {v:.1f}s" for k, v in result["timings"].items())
            )
            versus = result["report"]["comparisons"].get("retrieval_only", {}).get("ndcg@10")
            if versus:
                print(
                    f"{name}: re-ranked - retrieval-only NDCG@10 {versus['difference']:+.4f} "
                    f"[{versus['low']:+.4f}, {versus['high']:+.4f}]"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, skipped))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
