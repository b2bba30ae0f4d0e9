"""The `retrain` flow: the chain's phases (`components.pipeline.chain`), each step a Prefect
task with its cache and retries, recorded in the run report as they finish.

Tasks pass URIs and content ids, never DataFrames. A failed run writes its report with the
error and never touches `champion`; a re-run resumes from its last finished stage.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from components.evaluation.summary import summary_markdown, summary_rows
from components.pipeline import chain
from components.pipeline.report import RunReport, log_ranker_curves, log_report
from flows.stage_tasks import prefect_stages
from flows.task_runners import task_runner_from_settings
from flows.tracked_run import finish_tracked_run, start_tracked_run


@flow(name="retrain", log_prints=True, task_runner=task_runner_from_settings())
def retrain(
    config_path: str = "configs/synthetic.yaml",
    overrides: dict[str, Any] | None = None,
    force_promote: bool = False,
) -> dict[str, Any]:
    """Retrain, evaluate and register the recommender described by `config_path`; the
    promotion gate decides whether it becomes `champion` (`force_promote`: it does unless
    it fails to load and answer, recorded as `forced`)."""
    run = start_tracked_run("retrain", config_path, overrides)
    config, client, run_id, run_dir = run.config, run.client, run.run_id, run.run_dir
    report = RunReport.start(run_id, config)
    client.set_tag(run_id, "rewear.config_hash", report.config_hash)
    client.set_tag(run_id, "rewear.model", config.model.summary())
    client.log_dict(run_id, report.config, "config.json")
    stages = prefect_stages(report.timings_s)
    try:
        data = chain.data_phase(config, run_dir, run.settings.snapshots, stages)
        report.record_data(data)
        retrieval = chain.retrieval_phase(config, data.split_uri, run_dir, stages)
        report.record_retrieval(retrieval)
        ranking = chain.ranking_phase(config, data.split_uri, retrieval, run_dir, stages)
        report.record_ranking(ranking)
        evaluation = chain.evaluation_phase(
            config, data.split_uri, retrieval, ranking, run_dir, stages
        )
        report.record_evaluation(evaluation)
        report.champion_comparison = chain.champion_comparison(
            config, data, ranking, run_dir, stages
        )
        log_report(client, run_id, report)
        log_ranker_curves(client, run_id, ranking.ranker)
        published = chain.publish_phase(
            config, data, retrieval, ranking, report, run_dir, stages, force_promote
        )
        report.record_publish(published)
    except BaseException as error:
        report.record_failure(error, run_dir)
        raise
    finally:
        # The run ends only once its report is logged: a kill before leaves it open, and
        # the next run marks it FAILED (flows.tracked_run.open_tracking).
        finish_tracked_run(run, report.model_dump(mode="json"), report.status != "completed")
    publish_artifacts(report)
    return {**report.model_dump(mode="json"), "report_path": str(run_dir / "report.json")}


def publish_artifacts(report: RunReport) -> None:
    """Prefect artifacts with stable keys: one markdown summary, one metrics table."""
    dataset = "".join(c if c.isalnum() else "-" for c in report.dataset.lower())
    create_markdown_artifact(
        key=f"rewear-retrain-summary-{dataset}",
        markdown=summary_markdown(report.model_dump(mode="json")),
        description=f"rewear retrain summary ({report.dataset})",
    )
    create_table_artifact(
        key=f"rewear-retrain-metrics-{dataset}",
        table=summary_rows(report.metrics, report.baselines, report.comparisons),
        description=f"model vs baselines on the test window ({report.dataset})",
    )
