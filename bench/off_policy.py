"""Off-policy evaluation on the simulated market: the sections of bench/online.py that
docs/experiments.md's off-policy figures come from.

- explore_cost: sold listings per served user with champion's lists explored at each
  temperature against the deterministic lists (same market draws);
- ope: over `--ope-seeds` markets, a challenger's sold listings per session estimated from
  20,000 explored sessions of champion, against the simulator's on-policy value of the
  challenger (the mean of `--truth-seeds` markets where it serves everyone);
- offline_online: for each challenger, the offline gate's NDCG@10 difference, the
  off-policy estimate and the global online effect (100% against 100%), and how well each
  ranks the challengers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from components.config import PipelineConfig
from components.data.market_simulation import MarketSimulation
from components.experiments.attribution import attribute_outcomes
from components.experiments.schema import CONTROL
from components.pipeline.off_policy import Replay, estimate_versions, logged_requests
from components.serving.experiment import ExperimentRecommender, ExperimentSpec
from components.serving.list_cache import CachedLists

Policy = Callable[..., list[list[str]]]


class Collected:
    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def log(self, rows: pd.DataFrame) -> None:
        self.frames.append(rows)

    def exposures(self) -> pd.DataFrame:
        return pd.concat(self.frames, ignore_index=True)


def explored_policy(
    config: PipelineConfig, arm: CachedLists, version: int, temperature: float, seed: int
) -> tuple[Policy, Collected]:
    """Champion's lists drawn by Plackett-Luce at `temperature` (0: its own lists), logged
    in memory, as the simulation's policy."""
    sink = Collected()
    spec = ExperimentSpec(
        experiment_id=f"bench-explore-{seed}",
        model_name=config.registry.model_name,
        control_version=version,
        treatment_version=version,
        design="explore" if temperature > 0 else "ab",
        salt=f"bench-explore-{seed}",
        treatment_share=0.5,
        exposure_log="memory",
        started_at="2026-01-01T00:00:00+00:00",
        exploration_top_m=config.experiment.exploration.top_m,
        exploration_temperature=temperature,
    )
    recommender = ExperimentRecommender(spec, {"control": arm, "treatment": arm}, sink)

    def policy(users, k, at, sold):
        answer = recommender.recommend(users, k=k, exclude_item_ids=sold, served_at=at)
        grouped = answer.groupby("request", sort=True)["item_id"].agg(list)
        return [list(grouped.get(row, [])) for row in range(len(users))]

    return policy, sink


def sales_per(
    exposures: pd.DataFrame, interactions: pd.DataFrame, config: PipelineConfig, per: str
) -> float:
    """Sales attributed to the exposures, per distinct value of column `per` (request_id:
    per session, the off-policy estimates' target; unit_id: per served user)."""
    window = {"purchase": pd.Timedelta(config.experiment.attribution_windows["purchase"])}
    sold = attribute_outcomes(exposures, interactions, window)
    return len(sold) / exposures[per].nunique()


def _simulation(
    config: PipelineConfig, seed: int, days: int | None = None, recommended_only: bool = False
) -> MarketSimulation:
    """The market continued with simulation seed `seed`; `recommended_only`: every session
    opens on the recommendations (no organic browsing: the estimators' accuracy runs,
    where organic sessions only cost time)."""
    update: dict[str, Any] = {"seed": seed}
    if days is not None:
        update["days"] = days
    if recommended_only:
        update["recommended_share"] = 1.0
    return MarketSimulation.from_source(
        config.source, config.experiment.simulation.model_copy(update=update)
    )


def expected_explore_cost(
    config: PipelineConfig, arm: CachedLists, temperatures: tuple[float, ...]
) -> dict[str, float]:
    """Exact expected cost per temperature: every user's expected purchases from champion's
    list at the simulation's start (position-based examination), explored (the
    Plackett-Luce marginals over its top m) against deterministic, summed over users."""
    from components.experiments.exploration import position_marginals

    simulation = _simulation(config, 0)
    users = [str(user) for user in simulation.marketplace.tastes.user_ids]
    arm.prefetch(users)
    top_m, k = config.experiment.exploration.top_m, config.experiment.simulation.k
    item_ids = arm.recommender.item_ids
    lists = [list(item_ids[arm.cached(user)[:top_m]]) for user in users]
    chance = simulation.slot_purchase_probabilities(users, lists, simulation.start)
    exam = np.arange(1, k + 1, dtype=float) ** -config.experiment.simulation.examination_decay
    lengths = np.array([len(items) for items in lists])
    deterministic = float((chance[:, :k] * exam[None, : chance[:, :k].shape[1]]).sum())
    costs = {}
    for temperature in temperatures:
        explored = 0.0
        for m in np.unique(lengths):
            rows = lengths == m
            marginals = position_marginals(int(m), k, temperature)
            explored += float((chance[rows, :m] @ marginals @ exam[: marginals.shape[1]]).sum())
        costs[str(temperature)] = 1 - explored / deterministic
    return costs


def explore_cost_section(
    config: PipelineConfig,
    arm: CachedLists,
    version: int,
    temperatures: tuple[float, ...],
    seeds: int,
) -> dict[str, Any]:
    """Relative change of sold listings per served user, explored against deterministic:
    exactly in expectation, and as realised over `seeds` simulated markets (whose market
    noise is larger than the small costs)."""
    expected = expected_explore_cost(config, arm, temperatures)
    print("expected explore cost: " + ", ".join(f"T={t}: {c:.2%}" for t, c in expected.items()))
    rows = []
    for seed in range(seeds):
        simulation = _simulation(config, 300 + seed)
        figures = {}
        for temperature in (0.0, *temperatures):
            policy, sink = explored_policy(config, arm, version, temperature, seed)
            result = simulation.run(policy)
            figures[temperature] = sales_per(
                sink.exposures(), result.interactions, config, "unit_id"
            )
        for temperature in temperatures:
            rows.append(
                {
                    "seed": seed,
                    "temperature": temperature,
                    "relative": figures[temperature] / figures[0.0] - 1,
                }
            )
        print(
            f"explore cost market {seed + 1}/{seeds}: "
            + ", ".join(f"T={t}: {figures[t] / figures[0.0] - 1:+.2%}" for t in temperatures)
        )
    if not rows:
        return {"expected_cost": expected}
    table = pd.DataFrame(rows).groupby("temperature")["relative"]
    return {
        "expected_cost": expected,
        "realised_relative_change": {
            str(t): {"mean": float(m), "sd": float(s)}
            for (t, m), s in zip(table.mean().items(), table.std().fillna(0.0), strict=True)
        },
    }


def ope_section(
    config: PipelineConfig,
    arms: dict[int, CachedLists],
    champion: int,
    challenger: int,
    temperature: float,
    seeds: int,
    truth_seeds: int,
    sessions: int = 20_000,
) -> dict[str, Any]:
    """The challenger's value per session estimated from `sessions` explored sessions of
    champion, over `seeds` markets, against its on-policy value."""
    from components.pipeline.experiment_simulation import SingleArm

    days = _days_for(config, arms[champion], champion, sessions)
    truths = []
    for seed in range(truth_seeds):
        simulation = _simulation(config, 500 + seed, days, recommended_only=True)
        single = SingleArm(arms[challenger], "treatment")
        result = simulation.run(single.policy)
        truths.append(sales_per(single.exposures(), result.interactions, config, "request_id"))
    truth = float(np.mean(truths))
    print(f"on-policy value of v{challenger}: {truth:.4f} per session ({truth_seeds} markets)")
    rows = []
    started = time.time()
    for seed in range(seeds):
        simulation = _simulation(config, 1_000 + seed, days, recommended_only=True)
        policy, sink = explored_policy(config, arms[champion], champion, temperature, seed)
        result = simulation.run(policy)
        exposures = _first_sessions(sink.exposures(), sessions)
        logged = logged_requests(
            exposures, result.interactions, config.experiment, config.experiment.exploration.top_m
        )
        depth = config.experiment.exploration.top_m + 60
        replays = {
            version: Replay.with_lists(arms[version], result.items, depth)
            for version in {champion, challenger}
        }
        found = estimate_versions(
            logged,
            {"challenger": replays[challenger]},
            {str(champion): replays[champion]},
            resamples=200,
            seed=seed,
        )["challenger"]
        # The estimand: the simulator's exact expected sales of the challenger's lists on
        # these sessions, in the market as it was (what serving it there would have sold).
        expected = _expected_value(
            simulation, logged, replays[challenger].ranked(logged, logged.items.shape[1])
        )
        row = {
            "seed": seed,
            "logged": float(logged.slates.reward.sum() / len(logged.unit_ids)),
            "expected_truth": expected,
        }
        for name, value in found.estimates.items():
            row[name] = value.value
            row[f"{name}_covers"] = value.low <= expected <= value.high
        row.update({f"support_{k}": v for k, v in found.support.to_dict().items()})
        rows.append(row)
        print(
            f"ope market {seed + 1}/{seeds} ({time.time() - started:.0f}s): expected "
            f"{expected:.4f}, "
            + ", ".join(
                f"{n} {row[n]:.4f}{'' if row[f'{n}_covers'] else ' (not covered)'}"
                for n in found.estimates
            )
        )
    table = pd.DataFrame(rows)
    summary: dict[str, Any] = {
        "temperature": temperature,
        "sessions": sessions,
        "days": days,
        "truth": truth,
        "truth_sd_of_mean": float(np.std(truths, ddof=1) / np.sqrt(len(truths)))
        if len(truths) > 1
        else None,
        "logged_value": float(table["logged"].mean()),
        "support": {
            k.removeprefix("support_"): float(table[k].mean())
            for k in table.columns
            if k.startswith("support_")
        },
    }
    summary["expected_truth"] = float(table["expected_truth"].mean())
    summary["on_policy_over_expected"] = truth / summary["expected_truth"] - 1
    for name in found.estimates:
        error = (table[name] - table["expected_truth"]).abs() / table["expected_truth"]
        summary[name] = {
            "median_relative_error": float(error.median()),
            "mean": float(table[name].mean()),
            "relative_bias": float((table[name] / table["expected_truth"]).mean() - 1),
            "coverage": float(table[f"{name}_covers"].mean()),
            "median_error_against_on_policy_run": float(
                ((table[name] - truth).abs() / truth).median()
            ),
        }
    return summary


def _expected_value(simulation: MarketSimulation, logged, lists: list[np.ndarray]) -> float:
    """Mean expected purchases per logged session of `lists` (tastes of each session's day)."""
    moments = pd.to_datetime(logged.served_us, unit="us", utc=True)
    days = moments.floor("D")
    total = 0.0
    for day in days.unique():
        rows = np.flatnonzero(days == day)
        total += float(
            simulation.expected_purchases(
                [str(u) for u in logged.unit_ids[rows]],
                [list(lists[row]) for row in rows],
                moments[rows[0]],
            ).sum()
        )
    return total / len(lists)


def _days_for(config: PipelineConfig, arm: CachedLists, version: int, sessions: int) -> int:
    """Simulated days that hold at least `sessions` recommendation sessions."""
    simulation = _simulation(config, 999, 3, recommended_only=True)
    policy, _ = explored_policy(config, arm, version, 0.0, 999)
    per_day = simulation.run(policy).sessions.shape[0] / 3
    return int(np.ceil(sessions / per_day * 1.05))


def _first_sessions(exposures: pd.DataFrame, sessions: int) -> pd.DataFrame:
    order = exposures.drop_duplicates("request_id").sort_values("served_at", kind="stable")
    keep = set(order["request_id"].head(sessions))
    return exposures[exposures["request_id"].isin(keep)]


def offline_online_section(
    config: PipelineConfig,
    arms: dict[int, CachedLists],
    champion: int,
    challengers: list[int],
    offline: dict[int, float],
    temperature: float,
    seeds: int,
) -> dict[str, Any]:
    """Per challenger: the offline NDCG@10 difference against champion, the off-policy
    relative difference (the gate's estimator, from champion's explored log), and the global online
    effect (100% vs 100%, relative); Spearman correlations with the online truth and the
    share of challenger pairs each orders as the truth does."""
    from components.pipeline.experiment_simulation import SingleArm, per_unit_metric

    gate_estimator = config.registry.promotion.off_policy.estimator
    rows = {version: {"offline_ndcg10_difference": offline[version]} for version in challengers}
    online: dict[int, list[float]] = {version: [] for version in challengers}
    estimates: dict[int, list[float]] = {version: [] for version in challengers}
    for seed in range(seeds):
        simulation = _simulation(config, 700 + seed)
        means = {}
        for version in [champion, *challengers]:
            single = SingleArm(arms[version], str(version))
            result = simulation.run(single.policy)
            values = per_unit_metric(
                single.exposures(), result, simulation.history, config.experiment
            )
            means[version] = float(values.mean())
        for version in challengers:
            online[version].append(means[version] / means[champion] - 1)
        policy, sink = explored_policy(config, arms[champion], champion, temperature, seed)
        result = simulation.run(policy)
        logged = logged_requests(
            sink.exposures(),
            result.interactions,
            config.experiment,
            config.experiment.exploration.top_m,
        )
        depth = config.experiment.exploration.top_m + 60
        replays = {
            v: Replay.with_lists(arms[v], result.items, depth) for v in [champion, *challengers]
        }
        found = estimate_versions(
            logged,
            {str(v): replays[v] for v in [champion, *challengers]},
            {str(champion): replays[champion]},
            resamples=50,
            estimators=(gate_estimator, "snips", "dr"),
            seed=seed,
        )
        for version in challengers:
            base = found[str(champion)].estimates[gate_estimator].value
            relative = found[str(version)].estimates[gate_estimator].value / base - 1
            estimates[version].append(relative)
            rows[version].setdefault("support", found[str(version)].support.to_dict())
        print(f"offline/online market {seed + 1}/{seeds} done")
    for version in challengers:
        rows[version]["online_relative"] = float(np.mean(online[version]))
        rows[version]["off_policy_relative"] = float(np.mean(estimates[version]))
    truth = [rows[v]["online_relative"] for v in challengers]
    summary: dict[str, Any] = {"rows": {str(v): rows[v] for v in challengers}}
    for name, key in (
        ("offline", "offline_ndcg10_difference"),
        ("off_policy", "off_policy_relative"),
    ):
        predicted = [rows[v][key] for v in challengers]
        summary[f"{name}_spearman"] = float(stats.spearmanr(predicted, truth).statistic)
        pairs = [(a, b) for i, a in enumerate(challengers) for b in challengers[i + 1 :]]
        agree = [
            np.sign(rows[a][key] - rows[b][key])
            == np.sign(rows[a]["online_relative"] - rows[b]["online_relative"])
            for a, b in pairs
        ]
        summary[f"{name}_pair_agreement"] = float(np.mean(agree))
        summary[f"{name}_sign_agreement"] = float(
            np.mean(
                [np.sign(rows[v][key]) == np.sign(rows[v]["online_relative"]) for v in challengers]
            )
        )
    return summary


__all__ = ["CONTROL", "explore_cost_section", "offline_online_section", "ope_section"]
