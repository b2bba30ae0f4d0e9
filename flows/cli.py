"""The `rewear` command line: retrain, generate data, ask the champion for recommendations."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="rewear: retrain and serve a two-stage marketplace recommender.")
data_app = typer.Typer(help="Data utilities.")
app.add_typer(data_app, name="data")
experiment_app = typer.Typer(
    help="Online experiments: champion against challenger on live (or simulated) traffic."
)
app.add_typer(experiment_app, name="experiment")
console = Console()
errors = Console(stderr=True, soft_wrap=True)


def _prepare_environment() -> Any:
    """Keep Prefect's state under REWEAR_HOME unless the user set PREFECT_HOME/API_URL."""
    from pydantic import ValidationError

    from components.settings import RewearSettings
    from components.store import StorageError

    try:
        settings = RewearSettings().ensure()
    except StorageError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from error
    except ValidationError as error:
        problems = "; ".join(_setting_problem(problem) for problem in error.errors())
        errors.print(f"[red]error:[/red] {escape(problems)}", highlight=False)
        raise typer.Exit(2) from error
    os.environ.setdefault("PREFECT_HOME", str(settings.prefect_home))
    # The temporary local server may need more than Prefect's default 20 s to start on a
    # busy 2-core machine; a slow start must not fail a scheduled retrain.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # The local server's anonymous telemetry heartbeat races its own start-up writes to
    # SQLite and printed "database is locked" tracebacks on successful runs.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The components' own progress (encoder epochs, index builds) in the console and the
    # flow run's logs.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "components")
    # MLflow's per-file download bars would bury the progress lines of the flows.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return settings


def _setting_problem(problem: Any) -> str:
    """One invalid REWEAR_* environment variable, named, as one phrase."""
    if problem["type"] == "value_error":
        return str(problem["msg"]).removeprefix("Value error, ")
    name = "REWEAR_" + "_".join(str(part) for part in problem["loc"]).upper()
    return f"{name}: {problem['msg']} (got {problem.get('input')!r})"


def _parse_overrides(values: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"--set expects key=value (e.g. source.n_users=500), got {value!r}"
            )
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            errors.print(
                f"[red]error:[/red] --set {escape(value)}: the value is not valid YAML "
                f"({escape(problem)}); quote it to pass it as text, e.g. --set "
                f"\"{escape(key.strip())}='{escape(raw)}'\"",
                highlight=False,
            )
            raise typer.Exit(2) from None
    return overrides


@app.command()
def retrain(
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML")] = Path(
        "configs/synthetic.yaml"
    ),
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: --set source.n_users=500"),
    ] = None,
    force_promote: Annotated[
        bool,
        typer.Option(
            "--force-promote",
            help="Make the new version champion even if the promotion gate says no "
            "(recorded as `forced` on the version and in the report; a version that does "
            "not load is never promoted)",
        ),
    ] = False,
) -> None:
    """Run the retrain flow and print a summary of the run report."""
    _prepare_environment()
    parsed = _checked_overrides(config, overrides)

    from flows.retrain import retrain as retrain_flow

    print_report(_run_flow(retrain_flow, config, parsed, force_promote))


def print_report(report: dict[str, Any]) -> None:
    from components.evaluation.summary import chain_lines

    for line in chain_lines(report):
        console.print(line, highlight=False)
    title = f"rewear retrain — {report['dataset']} ({report['protocol']}, test window)"
    _print_summary(title, report["metrics"], report["baselines"], report.get("comparisons"))
    model = report.get("model") or {}
    console.print(
        f"snapshot {report['snapshot_id']} · {report['evaluated_users']} users evaluated · "
        f"registered {model.get('name')} v{model.get('version')} aliases {model.get('aliases')}"
        f" · promoted: {report['promoted']}"
    )
    gate = report.get("promotion") or {}
    if gate:
        why = "; ".join(gate["reasons"]) or "every check passed"
        console.print(f"promotion: {gate['decision']} ({why})")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in report["timings_s"].items())
    console.print(f"timings: {timings}")
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"report: {report['report_path']}")


def _print_summary(
    title: str,
    metrics: dict[str, float],
    baselines: dict[str, dict[str, float]],
    comparisons: dict[str, Any] | None,
) -> None:
    """Two tables: the model beside each baseline, then the bootstrap intervals."""
    from components.evaluation.summary import interval_rows, summary_rows

    console.print(_rows_table(Table(title=title), summary_rows(metrics, baselines)))
    intervals = interval_rows(comparisons)
    console.print(_rows_table(Table(title="paired bootstrap over users"), intervals))


def _rows_table(table: Table, rows: list[dict[str, Any]]) -> Table:
    """Fill a rich table from summary rows (metric, model, baselines, intervals)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    return table


@app.command()
def evaluate(
    model_uri: Annotated[
        str,
        typer.Option(
            "--model",
            help="Registered model (models:/rewear@champion, models:/rewear/3) or a bundle folder",
        ),
    ] = "models:/rewear@champion",
    config: Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML")] = Path(
        "configs/synthetic.yaml"
    ),
    snapshot: Annotated[
        str | None, typer.Option(help="Snapshot id under REWEAR_HOME/snapshots (default: ingest)")
    ] = None,
    stage: Annotated[str, typer.Option(help="Window to score: test or valid")] = "test",
    output: Annotated[
        Path | None, typer.Option("--json", help="Also write the result here")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: --set split.test_duration=14D"),
    ] = None,
    off_policy: Annotated[
        bool,
        typer.Option(
            "--off-policy",
            help="Estimate the version's sold listings per session from the explored "
            "exposure log instead (and champion's, for the difference)",
        ),
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="--off-policy: first UTC day of the log to use")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="--off-policy: UTC day the log ends (exclusive)")
    ] = None,
) -> None:
    """Score a registered model version on a snapshot with the config's protocol, beside
    the baselines, and print the summary table. Only the version's bundle is read (native
    formats, checked against its manifest): no model code or pickle from it is run. With
    --off-policy: estimate what the version would have sold per session on the sessions
    served with exploration (experiment.exploration), before it gets any traffic."""
    if off_policy:
        _evaluate_off_policy(model_uri, config, overrides, since, until, output)
        return
    settings = _prepare_environment()
    import tempfile

    from mlflow.exceptions import MlflowException

    from components.config import ConfigError, load_config
    from components.data.snapshot import SnapshotError, load_snapshot_manifest
    from components.pipeline import chain, data_steps, evaluation_steps
    from components.registry.registration import load_bundle
    from components.registry.tracking import TrackingStoreError, use_tracking_store
    from components.serving.bundle import BundleError

    if stage not in ("test", "valid"):
        raise typer.BadParameter(f"--stage must be test or valid, got {stage!r}")
    try:
        pipeline = load_config(config, _parse_overrides(overrides or []))
    except ConfigError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from error
    with tempfile.TemporaryDirectory(prefix="rewear-evaluate-") as download:
        try:
            use_tracking_store(settings)
            recommender = load_bundle(model_uri, Path(download))
        except (MlflowException, BundleError, TrackingStoreError) as error:
            message = getattr(error, "message", None) or str(error)
            errors.print(f"[red]error:[/red] cannot load {model_uri}: {message}")
            raise typer.Exit(1) from error
        try:
            if snapshot is None:
                with tempfile.TemporaryDirectory() as scratch:
                    validated = chain.validated_source(pipeline, Path(scratch), chain.Stages())
                    written = data_steps.snapshot(validated["uri"], settings.snapshots)
                    snapshot = written["snapshot_id"]
            snapshot_path = load_snapshot_manifest(settings.snapshots / snapshot).path
            result = evaluation_steps.evaluate_registered(
                recommender, snapshot_path, pipeline, stage
            )
        except (SnapshotError, evaluation_steps.LeakageError, ValueError) as error:
            errors.print(f"[red]error:[/red] {error}")
            raise typer.Exit(2) from error
    result = {"model_uri": model_uri, "snapshot_id": snapshot, "stage": stage, **result}
    print_evaluation(result)
    _write_result(result, output)


def _evaluate_off_policy(
    model_uri: str,
    config: Path,
    overrides: list[str] | None,
    since: str | None,
    until: str | None,
    output: Path | None,
) -> None:

    from mlflow.exceptions import MlflowException

    from components.config import load_config
    from components.experiments.off_policy import NoSupportError
    from components.pipeline.off_policy import evaluate_off_policy, resolve_version

    settings = _prepare_environment()
    parsed = _checked_overrides(config, overrides)
    pipeline = load_config(config, parsed)
    try:
        bounds = [None if day is None else pd_timestamp(day) for day in (since, until)]
        version, champion = resolve_version(settings, pipeline, model_uri)
        wanted = [version] if champion in (None, version) else [version, champion]
        gate = pipeline.registry.promotion.off_policy
        result = evaluate_off_policy(pipeline, wanted, *bounds, estimator=gate.estimator)
    except (NoSupportError, MlflowException, ValueError) as error:
        message = getattr(error, "message", None) or str(error)
        errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
        raise typer.Exit(2) from error
    result = {"model_uri": model_uri, "version": version, "champion": champion, **result}
    print_off_policy(result)
    _write_result(result, output)


def _write_result(result: dict[str, Any], output: Path | None) -> None:
    """`--json`: the printed result, written as JSON too."""
    if output is None:
        return
    import json

    output.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"written: {output}")


def pd_timestamp(day: str) -> Any:
    import pandas as pd

    try:
        return pd.Timestamp(day, tz="UTC")
    except ValueError as error:
        raise ValueError(f"{day!r} is not a date: give e.g. 2026-03-01") from error


def print_off_policy(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"{result['model_uri']} off-policy: sold listings per session, "
        f"{result['requests']} explored sessions of {result['units']} users "
        f"({result['period'][0][:10]} to {result['period'][1][:10]}; logged "
        f"{result['logged_value']:.4f})"
    )
    table.add_column("version")
    table.add_column("estimator")
    table.add_column("value", justify="right")
    table.add_column("95% interval", justify="right")
    for version, found in result["versions"].items():
        for name, value in found["estimates"].items():
            table.add_row(
                f"v{version}",
                name,
                f"{value['value']:.4f}",
                f"[{value['low']:.4f}, {value['high']:.4f}]",
            )
    console.print(table)
    for version, found in result["versions"].items():
        support = found["support"]
        console.print(
            f"v{version}: {support['covered_slots']:.0%} of its slots inside the logged "
            f"candidates, {support['matched_slots']:.1%} of logged slots matched, "
            f"effective sample {support['effective_share']:.1%} of the sessions (same slot), "
            f"{support.get('effective_share_position_based', float('nan')):.1%} (any slot)",
            markup=False,
        )
    if "difference" in result:
        difference = result["difference"]
        console.print(
            f"v{result['version']} against champion v{result['champion']} "
            f"({difference['estimator']}): {difference['relative']:+.2%} "
            f"[{difference['low']:+.2%}, {difference['high']:+.2%}]",
            markup=False,
        )


def print_evaluation(result: dict[str, Any]) -> None:
    title = (
        f"{result['model_uri']} on snapshot {result['snapshot_id']} ({result['stage']}, "
        f"{result['evaluated_users']} users)"
    )
    _print_summary(title, result["metrics"], result["baselines"], result["comparisons"])


@data_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder for the parquet tables")],
    seed: Annotated[int, typer.Option(help="Random seed")] = 7,
    n_users: Annotated[int | None, typer.Option(help="Number of users")] = None,
    n_days: Annotated[int | None, typer.Option(help="Simulated days")] = None,
) -> None:
    """Write the synthetic marketplace as canonical parquet tables (interactions, items, users)."""
    from components.config import SyntheticSourceConfig
    from components.data.snapshot import write_tables
    from components.data.synthetic import generate_marketplace

    values: dict[str, Any] = {"seed": seed}
    if n_users is not None:
        values["n_users"] = n_users
    if n_days is not None:
        values["n_days"] = n_days
    marketplace = generate_marketplace(SyntheticSourceConfig(**values))
    out.mkdir(parents=True, exist_ok=True)
    described = write_tables(marketplace.tables, out)
    for name, info in described.items():
        console.print(f"{name}: {info['rows']} rows -> {out / (name + '.parquet')}")


@app.command()
def recommend(
    user_id: Annotated[
        str | None, typer.Option("--user-id", help="User to recommend for (omit: anonymous)")
    ] = None,
    recent_items: Annotated[
        list[str] | None,
        typer.Option(
            "--recent-item", help="An item the (anonymous) user just viewed; repeat for more"
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="An item never to return; repeatable")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="How many items")] = 10,
    model: Annotated[str, typer.Option(help="Registered model name")] = "rewear",
    alias: Annotated[str, typer.Option(help="Registry alias to load")] = "champion",
) -> None:
    """Ask `models:/<model>@<alias>` for a user's (or a session's) top-k and print them."""
    settings = _prepare_environment()
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from components.registry.registration import model_uri

    if user_id is None and not recent_items:
        errors.print(
            "[red]error:[/red] give --user-id, or --recent-item (repeatable) for an anonymous user"
        )
        raise typer.Exit(2)
    _use_tracking_store(settings)
    uri = model_uri(model, alias=alias)
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as error:
        errors.print(
            f"[red]error:[/red] cannot load {uri} from {settings.tracking_uri}: {error}. "
            "Run `rewear retrain` first, or check REWEAR_HOME."
        )
        raise typer.Exit(1) from error
    request: dict[str, Any] = {}
    if user_id is not None:
        request["user_id"] = [user_id]
    if recent_items:
        request["recent_item_ids"] = [list(recent_items)]
    try:
        answer = loaded.predict(
            pd.DataFrame(request), params={"k": k, "exclude_item_ids": list(exclude or [])}
        )
    except Exception as error:
        message = getattr(error, "message", None) or str(error)
        errors.print(f"[red]error:[/red] {message}")
        raise typer.Exit(2) from error
    who = f"user {user_id}" if user_id is not None else "an anonymous session"
    console.print(recommendation_table(answer, f"{uri} — top {k} for {who}"))


def recommendation_table(answer: Any, title: str) -> Table:
    """One row per recommended item: rank, item, title, category, price, score, source."""
    import pandas as pd

    table = Table(title=title)
    for column, justify in (
        ("rank", "right"),
        ("item", "left"),
        ("title", "left"),
        ("category", "left"),
        ("price", "right"),
        ("score", "right"),
        ("source", "left"),
    ):
        table.add_column(column, justify=justify)
    for row in answer.itertuples():
        table.add_row(
            str(row.rank),
            str(row.item_id),
            "" if pd.isna(row.title) else str(row.title),
            "" if pd.isna(row.category) else str(row.category),
            "" if pd.isna(row.price) else f"{row.price:.2f}",
            f"{row.score:.4f}",
            str(row.source),
        )
    return table


ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML")]
OverridesOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set source.n_users=500"),
]
DEFAULT_CONFIG = Path("configs/synthetic.yaml")


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="Model URI to serve")] = "models:/rewear@champion",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 5001,
    host: Annotated[
        str, typer.Option(help="Address to bind (0.0.0.0: every interface)")
    ] = "127.0.0.1",
    workers: Annotated[
        int | None, typer.Option(min=1, help="Server worker processes (default: one per CPU)")
    ] = None,
) -> None:
    """Serve a registered version with MLflow's model server (`mlflow models serve`) from
    REWEAR_HOME's registry, with this environment's tools on PATH (no activated venv
    needed). Runs until stopped."""
    from components.serving.server import serve_command, server_environment

    settings = _prepare_environment()
    _use_tracking_store(settings)
    workers = workers or os.cpu_count() or 1
    command = serve_command(model, port, workers, host)
    console.print(f"serving {model} on http://{host}:{port}/invocations ({workers} workers)")
    os.execve(command[0], command, server_environment(settings.tracking_uri))


@app.command("relocate-home")
def relocate_home_command() -> None:
    """Re-root the artifact locations of a copied or restored REWEAR_HOME's registry onto
    this home (MLflow records them as absolute paths: a copy would read the original's)."""
    from components.registry.tracking import relocate_home

    settings = _prepare_environment()
    if not settings.mlflow_db.exists() or settings.mlflow_tracking_uri is not None:
        errors.print(
            f"[red]error:[/red] no local registry at {settings.mlflow_db} to relocate "
            "(a tracking server's store is the server's)"
        )
        raise typer.Exit(1)
    changed = relocate_home(settings)
    if not any(changed.values()):
        console.print(f"nothing to relocate: {settings.mlflow_db} already records this home")
        return
    counts = ", ".join(f"{key} {count}" for key, count in changed.items() if count)
    console.print(f"re-rooted onto {settings.mlflow_artifacts}: {counts}", markup=False)


@app.command("refresh-index")
def refresh_index_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
) -> None:
    """Rebuild the champion's index from the newest data and publish it (no retraining)."""
    _prepare_environment()
    parsed = _checked_overrides(config, overrides)
    from flows.refresh_index import refresh_index

    result = _run_flow(refresh_index, config, parsed)
    console.print(refresh_summary(result), markup=False)


def refresh_summary(result: dict[str, Any]) -> str:
    """One line on what `refresh-index` did (nothing, when no data is newer)."""
    refresh = result.get("refresh", {})
    if result["status"] == "unchanged":
        return (
            f"unchanged: no data newer than champion v{result.get('source_version')}'s "
            f"({refresh.get('built_until')}), nothing registered, {result['duration_s']:.1f}s"
        )
    return (
        f"{result['status']}: v{result.get('source_version')} -> v{result.get('version')} "
        f"(aliases {', '.join(result.get('aliases') or []) or 'none'}), "
        f"{refresh.get('new_listings')} new listings, {refresh.get('dropped_listings')} "
        f"dropped, {refresh.get('available_listings')} indexed, {result['duration_s']:.1f}s"
    )


@app.command()
def monitor(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
    thresholds: Annotated[
        list[str] | None,
        typer.Option("--threshold", help="A monitoring threshold: --threshold max_psi=0.1"),
    ] = None,
) -> None:
    """Drift, champion quality and candidate recall on the newest data; exit 1 on an alert
    (too little data is reported as such, exit 0)."""
    _prepare_environment()
    parsed = _checked_overrides(config, overrides)
    from flows.monitor import monitor as monitor_flow

    result = _run_flow(monitor_flow, config, parsed, _parse_overrides(thresholds or []))
    console.print(
        f"{result['status']}: {result['summary']}. PSI {result['drift']['psi']}, "
        f"champion v{result['champion_version']} "
        f"{result['quality']['metrics']}, candidate recall {result['quality']['candidate_recall']}",
        markup=False,
    )


VersionOption = Annotated[
    int | None, typer.Option(help="Registered version (default: the alias's version)")
]


@experiment_app.command("start")
def experiment_start_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
    control: VersionOption = None,
    treatment: VersionOption = None,
) -> None:
    """Pin champion (control) and challenger (treatment), register the experiment model
    and print how to serve it."""
    _prepare_environment()
    parsed = _checked_overrides(config, overrides)
    from flows.experiment import experiment_start

    result = _run_flow(experiment_start, config, parsed, control, treatment)
    console.print(
        f"experiment {result['experiment_id']}: v{result['control_version']} (control) vs "
        f"v{result['treatment_version']} (treatment), {result['design']}; serve it with\n"
        f"  {result['serve_command']}",
        markup=False,
    )


@experiment_app.command("readout")
def experiment_readout_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
    as_of: Annotated[str | None, typer.Option(help="Read out as of this UTC time")] = None,
) -> None:
    """Read the live experiment out; a final verdict moves `champion` or holds it."""
    _prepare_environment()
    parsed = _checked_overrides(config, overrides)
    from flows.experiment import experiment_readout

    summary = _run_flow(experiment_readout, config, parsed, as_of)
    if summary["verdict"] == "no_live_experiment":
        console.print("no experiment is live: start one with `rewear experiment start`")
        return
    if summary["verdict"] == "logging":
        console.print(
            f"explore experiment {summary['experiment_id']}: {summary['sessions']} sessions of "
            f"{summary['units']} units logged; estimate a version with `rewear evaluate "
            "--off-policy --model models:/<name>/<version>`",
            markup=False,
        )
        return
    print_experiment(summary)


@experiment_app.command("simulate")
def experiment_simulate_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
    control: VersionOption = None,
    treatment: VersionOption = None,
) -> None:
    """Run champion against challenger on the simulated market, read out daily, decide."""
    _prepare_environment()
    parsed = _checked_overrides(config, overrides)
    from flows.experiment import experiment_simulate

    print_experiment(_run_flow(experiment_simulate, config, parsed, control, treatment))


@experiment_app.command("stop")
def experiment_stop_command(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: OverridesOption = None,
) -> None:
    """End the live experiment without a verdict (champion stays where it is)."""
    _prepare_environment()
    parsed = _checked_overrides(config, overrides)
    from components.config import load_config
    from components.pipeline.experiments import stop_live_experiment

    stopped = stop_live_experiment(load_config(config, parsed))
    if stopped is None:
        console.print("no experiment is live", markup=False)
    else:
        console.print(f"experiment {stopped} stopped; champion unchanged", markup=False)


def print_experiment(summary: dict[str, Any]) -> None:
    readout = summary["readout"]
    primary = readout["primary"]
    console.print(
        f"experiment {summary['experiment_id']} ({readout['design']}, {readout['days']:.0f} "
        f"days, units {readout['units']}): {readout['primary_metric']} per unit "
        f"{primary['treatment_mean']:.4f} vs {primary['control_mean']:.4f}, "
        f"{primary['relative']:+.2%} [{readout['relative_low']:+.2%}, "
        f"{readout['relative_high']:+.2%}] (always-valid)",
        markup=False,
    )
    if readout.get("interference_bias") is not None:
        console.print(
            f"global effect {readout['global_effect']:+.4f}, interference bias "
            f"{readout['interference_bias']:+.4f}",
            markup=False,
        )
    if summary["verdict"] == "a/a":
        console.print(
            f"verdict: a/a (v{summary['control_version']} against itself: a check of the "
            "loop, nothing to decide; champion unchanged)",
            markup=False,
        )
        return
    why = "; ".join(summary["reasons"]) or "every check passed"
    console.print(f"verdict: {summary['verdict']} ({why})", markup=False)


def _use_tracking_store(settings: Any) -> None:
    """The home's registry for a command that reads it, refused (exit 1, nothing created)
    when its database was lost or emptied beside the artifacts it described."""
    from components.registry.tracking import TrackingStoreError, use_tracking_store

    try:
        use_tracking_store(settings)
    except TrackingStoreError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from error


def _checked_overrides(config: Path, overrides: list[str] | None) -> dict[str, Any]:
    """Parse --set values and validate the config before any flow is imported (exit 2)."""
    from components.config import ConfigError, load_config

    parsed = _parse_overrides(overrides or [])
    try:
        load_config(config, parsed)
    except ConfigError as error:
        errors.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from error
    return parsed


def _run_flow(flow_fn: Any, config: Path, *args: Any) -> dict[str, Any]:
    """Run the flow; exit 1 with the error in one line on failure (the traceback goes to the
    log file under REWEAR_HOME and to the Prefect UI)."""
    from components.settings import RewearSettings
    from flows.console_logging import quiet_failures_on_console
    from flows.orchestration import local_prefect_server

    log_file = quiet_failures_on_console(RewearSettings().root / "logs")
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with local_prefect_server():
            return flow_fn(str(config), *args)
    except Terminated as error:
        errors.print(
            f"[red]{flow_fn.name} stopped:[/red] {error}; its MLflow run is marked failed and "
            "champion is unchanged",
            highlight=False,
        )
        raise typer.Exit(128 + signal.SIGTERM) from None
    except Exception as error:
        errors.print(
            f"[red]{flow_fn.name} failed:[/red] {escape(f'{type(error).__name__}: {error}')} "
            f"(traceback: {log_file})",
            highlight=False,
        )
        raise typer.Exit(1) from error
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(BaseException):
    """SIGTERM (a Prefect worker cancelling the run, `timeout`, a service manager): the run
    stops where it is, through the flows' own failure handling (MLflow run marked failed,
    no alias moved). A BaseException, so that no task retries it."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    # A second SIGTERM during the clean-up is not turned into another exception there.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(f"stopped by {signal.Signals(signum).name}")


def main() -> None:  # pragma: no cover - console script entry
    app(sys.argv[1:])
