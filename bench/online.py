"""Online experiments on the simulated market: the figures docs/experiments.md reports.

    .venv/bin/python bench/online.py                       # every section
    .venv/bin/python bench/online.py --only aa --seeds 25 --salts 20
    .venv/bin/python bench/online.py --champion 1 --challenger 3

Needs a registry with the champion the synthetic config trains and a challenger version
(e.g. `python3 scripts/dev.py demo`, then `rewear retrain --set model.ranker.enabled=false`
for a challenger without the ranker). The registry is copied into a scratch home first:
the bench never moves anything in yours.

Sections:
- assignment: arm shares over 1M ids, and the independence of two salts;
- srm: how often the sample-ratio check alarms on an injected 47/53 split at 10,000 units,
  and on a correct 50/50 one;
- aa: champion against itself, `--seeds` simulated markets x `--salts` re-randomisations
  (exact under A/A: both arms serve the same list, so re-salting only relabels units): the
  false-positive rate of one look at the end, of daily looks through the always-valid
  confidence sequence, and of naive daily looks; raw and with CUPED, whose variance
  reduction is reported per metric;
- power: the challenger's global lift (100% against 100%, common random numbers), the users
  A/B and team-draft interleaving each need for 80% power, the sign agreement of
  interleaving at its powered size, and the two arms' list overlap;
- simulate: `experiment-simulate`'s job (start, the simulated days, daily readouts,
  decision) timed on the 4k-user market, and the experiment model's latency against the
  champion's;
- explore, ope, offline_online: off-policy evaluation (bench/off_policy.py): the cost of
  exploration per temperature, the estimators' error and coverage over `--ope-seeds`
  markets, and offline NDCG, off-policy estimates and the online truth side by side for
  the `--challengers`.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from components.config import ExperimentConfig, PipelineConfig, load_config  # noqa: E402
from components.data.market_simulation import MarketSimulation  # noqa: E402
from components.experiments.assignment import assign_variants  # noqa: E402
from components.experiments.attribution import attribute_outcomes  # noqa: E402
from components.experiments.schema import CONTROL, TREATMENT  # noqa: E402
from components.experiments.statistics import (  # noqa: E402
    cuped,
    sample_ratio_mismatch,
    sequential_half_width,
    units_for_power,
)
from components.experiments.unit_table import cuped_covariates, unit_table  # noqa: E402
from components.settings import RewearSettings  # noqa: E402

SECTIONS = ("assignment", "srm", "aa", "power", "simulate", "explore", "ope", "offline_online")
#: Sections that run only when asked for (--only): they need challengers of known variety.
ON_REQUEST = ("explore", "ope", "offline_online")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "synthetic.yaml"))
    parser.add_argument("--only", action="append", choices=SECTIONS)
    parser.add_argument("--champion", type=int, help="control version (default: champion)")
    parser.add_argument("--challenger", type=int, help="treatment (default: challenger)")
    parser.add_argument("--seeds", type=int, default=25, help="simulated markets for A/A")
    parser.add_argument("--salts", type=int, default=20, help="re-randomisations per market")
    parser.add_argument("--power-seeds", type=int, default=3)
    parser.add_argument("--temperatures", default="0.1,0.2,0.3,0.5,1.0")
    parser.add_argument("--explore-seeds", type=int, default=3)
    parser.add_argument("--temperature", type=float, help="ope: logging temperature")
    parser.add_argument("--ope-seeds", type=int, default=50)
    parser.add_argument("--truth-seeds", type=int, default=10)
    parser.add_argument("--challengers", help="offline_online: versions, comma-separated")
    parser.add_argument("--table-seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    chosen = args.only or [name for name in SECTIONS if name not in ON_REQUEST]
    config = load_config(args.config)
    started = time.time()
    figures: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
        "date": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    with tempfile.TemporaryDirectory(prefix="rewear-online-bench-") as scratch:
        home = _scratch_home(Path(scratch))
        import os

        os.environ["REWEAR_HOME"] = str(home)
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        versions = _versions(config, args.champion, args.challenger)
        figures["versions"] = versions
        if "assignment" in chosen:
            figures["assignment"] = assignment_section()
        if "srm" in chosen:
            figures["srm"] = srm_section()
        if "aa" in chosen or "power" in chosen:
            arms = _cached_arms(config, versions, Path(scratch))
            if "aa" in chosen:
                figures["aa"] = aa_section(config, arms[CONTROL], args.seeds, args.salts)
            if "power" in chosen:
                figures["power"] = power_section(config, arms, versions, args.power_seeds)
        if "simulate" in chosen:
            figures["simulate"] = simulate_section(config, versions)
        if set(chosen) & set(ON_REQUEST):
            figures.update(off_policy_sections(config, versions, chosen, args, Path(scratch)))
    figures["total_s"] = round(time.time() - started, 1)
    text = json.dumps(figures, indent=2, default=float)
    print(text)
    if args.out:
        args.out.write_text(text)


def _scratch_home(scratch: Path) -> Path:
    """A copy of REWEAR_HOME's registry (database and artifacts) to work in."""
    source = RewearSettings().root
    home = scratch / "home"
    home.mkdir()
    for name in ("mlflow.db", "mlartifacts"):
        if not (source / name).exists():
            sys.exit(f"no registry at {source}: run `python3 scripts/dev.py demo` first")
        copy = shutil.copytree if (source / name).is_dir() else shutil.copy2
        copy(source / name, home / name)
    return home


def _versions(config: PipelineConfig, champion: int | None, challenger: int | None) -> dict:
    from components.registry.registration import CHALLENGER, CHAMPION, current_alias_version
    from components.registry.tracking import configure_mlflow

    client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
    name = config.registry.model_name
    return {
        CONTROL: champion or current_alias_version(client, name, CHAMPION),
        TREATMENT: challenger or current_alias_version(client, name, CHALLENGER),
    }


def _cached_arms(config: PipelineConfig, versions: dict, scratch: Path) -> dict[str, Any]:
    from components.registry.experiment_registration import fetch_version_bundle
    from components.serving.list_cache import CachedLists
    from components.serving.recommender import BundleRecommender

    simulation = MarketSimulation.from_source(config.source, config.experiment.simulation)
    users = [str(user) for user in simulation.marketplace.tastes.user_ids]
    arms = {}
    for arm, version in versions.items():
        bundle = fetch_version_bundle(config.registry.model_name, version, scratch / arm)
        cached = CachedLists(
            BundleRecommender.load(bundle), depth=3 * config.experiment.simulation.k
        )
        started = time.time()
        cached.prefetch(users)
        print(f"{arm} v{version}: {len(users)} users' lists in {time.time() - started:.1f}s")
        arms[arm] = cached
    return arms


# --- assignment and SRM --------------------------------------------------------------


def assignment_section() -> dict[str, float]:
    ids = [f"u{index:07d}" for index in range(1_000_000)]
    started = time.time()
    first = assign_variants(ids, "salt-a") == TREATMENT
    seconds = time.time() - started
    second = assign_variants(ids, "salt-b") == TREATMENT
    from scipy.stats import chi2_contingency

    table = [[np.sum(first & second), np.sum(first & ~second)]]
    table.append([np.sum(~first & second), np.sum(~first & ~second)])
    return {
        "units": len(ids),
        "treatment_share": float(first.mean()),
        "second_salt_share": float(second.mean()),
        "salts_agree": float(np.mean(first == second)),
        "independence_p_value": float(chi2_contingency(np.array(table))[1]),
        "hash_s_per_million": round(seconds, 2),
    }


def srm_section(units: int = 10_000, runs: int = 200, null_runs: int = 2_000) -> dict:
    def alarms(share: float, count: int, offset: int) -> float:
        flagged = 0
        for run in range(count):
            ids = [f"r{offset + run}-u{index}" for index in range(units)]
            treated = int(np.sum(assign_variants(ids, f"srm-{run}", share) == TREATMENT))
            flagged += sample_ratio_mismatch([units - treated, treated], [0.5, 0.5]).alarm
        return flagged / count

    return {
        "units": units,
        "injected_47_53_alarm_rate": alarms(0.53, runs, 0),
        "runs": runs,
        "aa_false_alarm_rate": alarms(0.5, null_runs, 10_000),
        "aa_runs": null_runs,
    }


# --- A/A -------------------------------------------------------------------------------


def daily_units(
    exposures: pd.DataFrame,
    interactions: pd.DataFrame,
    history: pd.DataFrame,
    items: pd.DataFrame,
    start: pd.Timestamp,
    days: int,
    config: ExperimentConfig,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Per unit: its covariates, the day it entered (first served), and its primary
    metric cumulated by the end of each day (units x days)."""
    windows = {event: pd.Timedelta(gap) for event, gap in config.attribution_windows.items()}
    attributed = attribute_outcomes(exposures, interactions, windows)
    units = unit_table(exposures, attributed, history, items, start, config)
    entered = exposures.groupby("unit_id")["served_at"].min().reindex(units.index)
    entered_day = ((entered - start) / pd.Timedelta(days=1)).astype(int).to_numpy()
    event = {"purchases": "purchase", "views": "view", "saves": "save"}[config.primary_metric]
    chosen = attributed[attributed["event"] == event].drop_duplicates(["user_id", "item_id"])
    day = ((chosen["ts"] - start) / pd.Timedelta(days=1)).astype(int).clip(0, days - 1)
    row = units.index.get_indexer(chosen["user_id"])
    counts = np.zeros((len(units), days))
    np.add.at(counts, (row[row >= 0], day.to_numpy()[row >= 0]), 1.0)
    return units, entered_day, np.cumsum(counts, axis=1)


def _looks(
    values: np.ndarray, present: np.ndarray, treated: np.ndarray, config: ExperimentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per day: does the fixed-horizon interval exclude 0, does the always-valid one."""
    fixed, sequential = [], []
    z = 1.959963984540054
    for day in range(values.shape[1]):
        seen = present[:, day]
        t, c = values[seen & treated, day], values[seen & ~treated, day]
        if len(t) < 2 or len(c) < 2:
            fixed.append(False)
            sequential.append(False)
            continue
        difference = t.mean() - c.mean()
        error = np.sqrt(t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c))
        half = sequential_half_width(
            error, len(t) + len(c), config.alpha, config.sequential_tuning_units
        )
        fixed.append(abs(difference) > z * error)
        sequential.append(abs(difference) > float(half))
    return np.array(fixed), np.array(sequential)


def aa_section(config: PipelineConfig, arm: Any, seeds: int, salts: int) -> dict[str, Any]:
    from components.pipeline.experiment_simulation import SingleArm

    experiment = config.experiment
    days = experiment.simulation.days
    tallies: dict[str, list[bool]] = {}
    reductions: dict[str, list[float]] = {"purchases": [], "views": [], "saves": [], "revenue": []}
    units_seen = []
    errors: dict[str, list[float]] = {}
    started = time.time()
    for seed in range(seeds):
        simulation = MarketSimulation.from_source(
            config.source, experiment.simulation.model_copy(update={"seed": seed})
        )
        single = SingleArm(arm, CONTROL)
        result = simulation.run(single.policy)
        exposures = single.exposures()
        units, entered, cumulative = daily_units(
            exposures,
            result.interactions,
            simulation.history,
            result.items,
            result.start,
            days,
            experiment,
        )
        units_seen.append(len(units))
        covariates = cuped_covariates(units)
        for metric in reductions:
            reductions[metric].append(
                cuped(units[metric].to_numpy(float), covariates).variance_reduction
            )
        present = entered[:, None] <= np.arange(days)[None, :]
        adjusted = cumulative.copy()
        for day in range(days):
            seen = present[:, day]
            if seen.sum() > covariates.shape[1] + 2:
                adjusted[seen, day] = cuped(cumulative[seen, day], covariates[seen]).adjusted
        final = covariates.shape[1] < present[:, -1].sum()
        for salt in range(salts):
            treated = assign_variants(units.index, f"aa-{seed}-{salt}") == TREATMENT
            if final:
                seen = present[:, -1]
                for name, values in (("raw", cumulative), ("cuped", adjusted)):
                    t, c = values[seen & treated, -1], values[seen & ~treated, -1]
                    errors.setdefault(name, []).append(
                        t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c)
                    )
            for name, values in (("raw", cumulative), ("cuped", adjusted)):
                fixed, sequential = _looks(values, present, treated, experiment)
                tallies.setdefault(f"{name}_fixed_horizon", []).append(bool(fixed[-1]))
                tallies.setdefault(f"{name}_naive_daily", []).append(bool(fixed.any()))
                tallies.setdefault(f"{name}_sequential_daily", []).append(bool(sequential.any()))
        print(f"A/A market {seed + 1}/{seeds}: {len(units)} units, {time.time() - started:.0f}s")
    replications = seeds * salts
    return {
        "replications": replications,
        "markets": seeds,
        "salts_per_market": salts,
        "units_per_market": float(np.mean(units_seen)),
        "false_positive_rate": {name: float(np.mean(v)) for name, v in tallies.items()},
        "cuped_variance_reduction": {m: float(np.mean(v)) for m, v in reductions.items()},
        # The estimator's own variance (squared standard error at the last look), CUPED
        # against raw, over every replication: what the in-sample figure above promises.
        "cuped_estimator_variance_reduction": float(
            1 - np.mean(errors["cuped"]) / np.mean(errors["raw"])
        ),
    }


# --- power: A/B against interleaving -----------------------------------------------------


class CollectedExposures:
    """An in-memory exposure log (the bench reads it straight back)."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def log(self, rows: pd.DataFrame) -> None:
        self.frames.append(rows)


def power_section(
    config: PipelineConfig, arms: dict[str, Any], versions: dict, seeds: int
) -> dict[str, Any]:
    from components.pipeline.experiment_simulation import SingleArm, per_unit_metric
    from components.serving.experiment import ExperimentRecommender, ExperimentSpec

    experiment = config.experiment
    lifts, controls, sds, differences, overlaps = [], [], [], [], []
    preference_credit = []
    for seed in range(seeds):
        simulation = MarketSimulation.from_source(
            config.source, experiment.simulation.model_copy(update={"seed": 100 + seed})
        )
        means = {}
        for variant in (CONTROL, TREATMENT):
            single = SingleArm(arms[variant], variant)
            result = simulation.run(single.policy)
            values = per_unit_metric(single.exposures(), result, simulation.history, experiment)
            means[variant] = float(values.mean())
            sds.append(float(values.std(ddof=1)))
        lifts.append(means[TREATMENT] - means[CONTROL])
        controls.append(means[CONTROL])
        sink = CollectedExposures()
        spec = ExperimentSpec(
            experiment_id=f"bench-interleave-{seed}",
            model_name=config.registry.model_name,
            control_version=versions[CONTROL],
            treatment_version=versions[TREATMENT],
            design="interleave",
            salt=f"bench-{seed}",
            treatment_share=0.5,
            exposure_log="memory",
            started_at=simulation.start.isoformat(),
        )
        recommender = ExperimentRecommender(spec, dict(arms), sink)

        def policy(users, k, at, sold, recommender=recommender):
            answer = recommender.recommend(users, k=k, exclude_item_ids=sold, served_at=at)
            grouped = answer.groupby("request", sort=True)["item_id"].agg(list)
            return [list(grouped.get(row, [])) for row in range(len(users))]

        result = simulation.run(policy)
        exposures = pd.concat(sink.frames, ignore_index=True)
        windows = {
            event: pd.Timedelta(gap) for event, gap in experiment.attribution_windows.items()
        }
        attributed = attribute_outcomes(exposures, result.interactions, windows)
        units = unit_table(
            exposures, attributed, simulation.history, result.items, result.start, experiment
        )
        metric = experiment.interleaving_credit
        differences.append(
            (units[f"{metric}_{TREATMENT}"] - units[f"{metric}_{CONTROL}"]).to_numpy(float)
        )
        preference_credit.append(
            units[[f"{metric}_{CONTROL}", f"{metric}_{TREATMENT}"]].to_numpy(float)
        )
        users = list(simulation.marketplace.tastes.user_ids[:1000])
        lists = {
            variant: arms[variant]
            .recommend(users, k=experiment.simulation.k)
            .groupby("request")["item_id"]
            .agg(set)
            for variant in (CONTROL, TREATMENT)
        }
        overlaps.append(
            float(
                np.mean(
                    [
                        len(a & b) / experiment.simulation.k
                        for a, b in zip(lists[CONTROL], lists[TREATMENT], strict=True)
                    ]
                )
            )
        )
        print(f"power market {seed + 1}/{seeds}: lift {lifts[-1]:+.4f}")
    lift = float(np.mean(lifts))
    sd = float(np.sqrt(np.mean(np.square(sds))))
    pooled = np.concatenate(differences)
    ab_per_arm = units_for_power(sd, lift)
    interleave_units = units_for_power(float(pooled.std(ddof=1)), float(pooled.mean()), arms=1)
    rng = np.random.default_rng(0)
    size = int(np.ceil(interleave_units))
    agree, detected = [], []
    for _ in range(2_000):
        sample = rng.choice(pooled, size, replace=True)
        agree.append(np.sign(sample.mean()) == np.sign(lift))
        error = sample.std(ddof=1) / np.sqrt(size)
        detected.append(
            abs(sample.mean()) > 1.959963984540054 * error
            and np.sign(sample.mean()) == np.sign(lift)
        )
    credit = np.vstack(preference_credit)
    decided = credit[:, 0] != credit[:, 1]
    return {
        "global_lift": lift,
        "global_lift_relative": lift / float(np.mean(controls)),
        "lift_per_market": lifts,
        "per_unit_sd": sd,
        "ab_users_for_80_power": float(2 * ab_per_arm),
        "interleaving_users_for_80_power": float(interleave_units),
        "interleaving_over_ab": float(interleave_units / (2 * ab_per_arm)),
        "interleaving_sign_agreement_at_powered_size": float(np.mean(agree)),
        "interleaving_empirical_power": float(np.mean(detected)),
        "interleaving_units_with_a_preference": float(decided.mean()),
        "treatment_preference_share": float((credit[decided, 1] > credit[decided, 0]).mean()),
        "list_overlap_at_k": float(np.mean(overlaps)),
    }


# --- off-policy evaluation ---------------------------------------------------------------


def off_policy_sections(
    config: PipelineConfig, versions: dict, chosen: list[str], args: Any, scratch: Path
) -> dict[str, Any]:
    import off_policy

    champion, challenger = versions[CONTROL], versions[TREATMENT]
    challengers = [int(v) for v in (args.challengers or str(challenger)).split(",")]
    arms = _lists_by_version(config, [champion, challenger, *challengers], scratch)
    temperature = args.temperature or config.experiment.exploration.temperature
    figures: dict[str, Any] = {}
    if "explore" in chosen:
        temperatures = tuple(float(t) for t in args.temperatures.split(","))
        figures["explore"] = off_policy.explore_cost_section(
            config, arms[champion], champion, temperatures, args.explore_seeds
        )
    if "ope" in chosen:
        figures["ope"] = off_policy.ope_section(
            config, arms, champion, challenger, temperature, args.ope_seeds, args.truth_seeds
        )
    if "offline_online" in chosen:
        offline = {
            version: _test_ndcg(config, version) - _test_ndcg(config, champion)
            for version in challengers
        }
        figures["offline_online"] = off_policy.offline_online_section(
            config, arms, champion, challengers, offline, temperature, args.table_seeds
        )
    return figures


def _lists_by_version(config: PipelineConfig, versions: list[int], scratch: Path) -> dict:
    from components.registry.experiment_registration import fetch_version_bundle
    from components.serving.list_cache import CachedLists
    from components.serving.recommender import BundleRecommender

    simulation = MarketSimulation.from_source(config.source, config.experiment.simulation)
    users = [str(user) for user in simulation.marketplace.tastes.user_ids]
    depth = config.experiment.exploration.top_m + 100  # sold listings leave room
    arms = {}
    for version in dict.fromkeys(versions):
        bundle = fetch_version_bundle(config.registry.model_name, version, scratch / f"v{version}")
        arms[version] = CachedLists(BundleRecommender.load(bundle), depth)
        arms[version].prefetch(users)
    return arms


def _test_ndcg(config: PipelineConfig, version: int) -> float:
    """The version's NDCG@10 on its retrain's test window (every challenger here was
    retrained on the champion's snapshot: the same window, what the offline gate compares)."""
    from components.registry.tracking import configure_mlflow

    client, _ = configure_mlflow(RewearSettings(), config.registry.experiment)
    run_id = client.get_model_version(config.registry.model_name, str(version)).run_id
    return float(client.get_run(run_id).data.metrics["test.ndcg_at_10"])


# --- the simulate job and latency ------------------------------------------------------


def simulate_section(config: PipelineConfig, versions: dict) -> dict[str, Any]:
    from components.pipeline.experiment_simulation import simulate_experiment
    from components.pipeline.experiments import stop_live_experiment

    stop_live_experiment(config)  # one left live in the copied registry
    started = time.time()
    result = simulate_experiment(config, versions[CONTROL], versions[TREATMENT], apply=True)
    seconds = time.time() - started
    latency = latency_figures(config, versions[CONTROL])
    readout = result["readout"]
    return {
        "seconds": round(seconds, 1),
        "verdict": result["verdict"],
        "reasons": result["reasons"],
        "decided_on_day": result["decided_on_day"],
        "relative": readout["primary"]["relative"],
        "relative_interval": [readout["relative_low"], readout["relative_high"]],
        "global_effect": result["global_effect"],
        "interference_bias": readout["interference_bias"],
        "units": readout["units"],
        "latency_ms": latency,
    }


def latency_figures(config: PipelineConfig, version: int, requests: int = 300) -> dict:
    """p50 / p99 of single-user k=20 requests in process: version `version` served alone
    against an A/A experiment model serving it in both arms (so the difference is the
    experiment's own cost: assignment, request ids, exposure rows, the logger), on the same
    users after a warm-up."""
    import mlflow

    from components.pipeline.experiments import start_experiment, stop_live_experiment

    started = start_experiment(config, version, version)
    settings = RewearSettings()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    simulation_users = MarketSimulation.from_source(
        config.source, config.experiment.simulation
    ).marketplace.tables.users["user_id"]
    users = list(simulation_users.sample(requests, random_state=0))
    figures = {}
    alone = f"models:/{config.registry.model_name}/{version}"
    for name, uri in (("alone", alone), ("experiment_aa", started.model_uri)):
        model = mlflow.pyfunc.load_model(uri)
        for user in users[:20]:
            model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 20})
        times = []
        for user in users:
            began = time.perf_counter()
            model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 20})
            times.append((time.perf_counter() - began) * 1000)
        figures[name] = {
            "p50": float(np.percentile(times, 50)),
            "p99": float(np.percentile(times, 99)),
        }
    stop_live_experiment(config)
    figures["version"] = version
    return figures


if __name__ == "__main__":
    main()
