"""Slate off-policy estimators: what a target ranker would have earned per session, from
sessions a randomised logging policy served (components.experiments.exploration).

Every estimator reads the same two things: the log (per request and slot: the reward,
the item-position marginal and prefix propensities, the logged item's rank in the
logging arm's own list) and the target's list for the same requests, as matches against
the logged slots. The target is deterministic (a registered version's ranking), so its
probability of a slot is 1 or 0, and the estimators are:

- `ips` / `snips`, independent-item (Li et al. 2018): a slot counts when the target puts
  the logged item in that slot, weighted by 1 / marginal; unbiased when a slot's reward
  depends only on its item and position (the position-based model). `snips` divides
  each slot's sum by the sum of its weights (self-normalised, per position), over the
  requests where the target's item has support (a weight's expectation is 1 there and 0
  elsewhere: normalising by all requests would credit unsupported slots with the
  average of the supported ones);
- `rips` / `snrips`, reward-interaction (McInerney et al. 2020): a slot counts when the
  target's whole prefix up to it is the logged prefix, weighted by 1 / prefix
  propensity; unbiased when a slot's reward depends on what was above it (the cascade),
  at the price of weights that vanish as the prefix grows;
- `dr`, doubly robust on the independent-item weights: a reward model's value of the
  target's slots plus the weighted residual of the logged ones; the reward model
  (rank in the logging list x position, fitted on the log) only has to reduce variance,
  the residual term keeps it unbiased.
- `pbm` / `snpbm`, position-based: a slot counts when the target's item was shown
  anywhere in the logged list, weighted by 1 / its inclusion probability and by the
  examination ratio of the target's slot to the logged one (the reward model's position
  effects, fitted on the log, where the randomised positions identify them). Unbiased
  under the position-based model when the examination is right, and it does not need the
  item in the same slot, so far more of the log counts; `snpbm` self-normalises per slot
  as `snips` does.

Intervals come from a bootstrap over units (users), so sessions of one user move together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

ESTIMATORS = ("ips", "snips", "rips", "snrips", "dr", "pbm", "snpbm")
SELF_NORMALISED = ("snips", "snrips", "snpbm")
#: Estimators that read a reward model fitted on the log.
MODEL_BASED = ("dr", "pbm", "snpbm")
POSITION_BASED = ("pbm", "snpbm")


class NoSupportError(ValueError):
    """The log cannot support an estimate (deterministic logging, or no overlap)."""


@dataclass(frozen=True)
class SlateLog:
    """Logged requests as (n requests x k slots) arrays; a slot the request did not fill
    has marginal NaN."""

    #: Unit index (0..n_units-1) of each request: the bootstrap resamples units.
    unit: np.ndarray
    reward: np.ndarray
    #: P(the logged item in this slot) and P(the logged prefix up to this slot).
    marginal: np.ndarray
    prefix: np.ndarray
    #: The logged item's rank (1-based) in the logging arm's own list.
    rank: np.ndarray
    #: Candidates the logging policy drew from, per request.
    candidates: np.ndarray
    #: P(the logged item anywhere in the list), for the position-based estimators (None:
    #: not logged).
    inclusion: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = self.reward.shape
        for name in ("marginal", "prefix", "rank", "inclusion"):
            if getattr(self, name) is not None and getattr(self, name).shape != shape:
                found = getattr(self, name).shape
                raise ValueError(f"SlateLog.{name} has shape {found}, not {shape}")
        if len(self.unit) != shape[0] or len(self.candidates) != shape[0]:
            raise ValueError("SlateLog.unit and .candidates need one entry per request")

    @property
    def filled(self) -> np.ndarray:
        return ~np.isnan(self.marginal)

    @property
    def deterministic(self) -> bool:
        """Every propensity 0 or 1: the log holds no randomisation to reweight."""
        values = self.marginal[self.filled]
        return bool(np.all((values == 1.0) | (values == 0.0)))


@dataclass(frozen=True)
class TargetSlates:
    """The target's list on the logged requests, as (n x k) arrays against the log."""

    #: The target's item in slot j is the logged item in slot j.
    match: np.ndarray
    #: ... and so are all the target's items above it.
    prefix_match: np.ndarray
    #: Rank (1-based) of the target's slot-j item in the logging arm's list; 0: outside the
    #: logging policy's candidates (no support); -1: the target has no item there.
    rank: np.ndarray
    #: The logged slot (0-based) that showed the target's slot-j item; -1: not shown (None:
    #: not computed, the position-based estimators refuse).
    shown_at: np.ndarray | None = None


@dataclass(frozen=True)
class RewardModel:
    """Expected reward of a slot as (rank in the logging list) x (position) effects, fitted
    on the log by Poisson maximum likelihood (alternating closed-form updates), ranks
    shrunk towards the mean so that rarely shown ranks do not overfit."""

    rank_effect: np.ndarray
    position_effect: np.ndarray

    @classmethod
    def fit(cls, log: SlateLog, iterations: int = 30, shrinkage: float = 20.0) -> RewardModel:
        rewards, counts = reward_tables(log, np.zeros(len(log.unit), dtype=np.int64), 1)
        shape = (-1, log.reward.shape[1])
        return cls.from_tables(
            rewards.toarray()[0].reshape(shape),
            counts.toarray()[0].reshape(shape),
            iterations,
            shrinkage,
        )

    @classmethod
    def from_tables(
        cls, rewards: np.ndarray, counts: np.ndarray, iterations: int = 30, shrinkage: float = 20.0
    ) -> RewardModel:
        """The fit on (rank x position) tables of summed rewards and slot counts."""
        k = rewards.shape[1]
        position = np.ones(k)
        prior = rewards.sum() / max(counts.sum(), 1.0)
        rank = np.full(rewards.shape[0], prior)
        for _ in range(iterations):
            exposure = counts @ position
            rank = (rewards.sum(axis=1) + shrinkage * prior) / (exposure + shrinkage)
            weight = rank @ counts
            position = np.where(weight > 0, rewards.sum(axis=0) / np.maximum(weight, 1e-12), 0.0)
        return cls(rank, position)

    def predict(self, ranks: np.ndarray) -> np.ndarray:
        """Expected reward of the item of logging rank `ranks` (1-based; 0: outside the
        candidates, valued as the last rank; -1: no item) in each slot."""
        k = ranks.shape[1]
        index = np.clip(np.where(ranks == 0, len(self.rank_effect), ranks), 1, None) - 1
        index = np.minimum(index, len(self.rank_effect) - 1)
        value = self.rank_effect[index] * self.position_effect[None, :k]
        return np.where(ranks < 0, 0.0, value)


def reward_tables(log: SlateLog, unit: np.ndarray, n_units: int) -> tuple[Any, Any]:
    """Per unit, the (rank x position) tables of summed rewards and of slots shown, each
    flattened into a row of a sparse (n_units, ranks * k) matrix: what the reward model is
    fitted on, so that a bootstrap resample of units can refit it."""
    filled = log.filled
    n_ranks = int(max(log.rank[filled].max(initial=1), log.candidates.max(initial=1)))
    k = log.reward.shape[1]
    ranks = np.clip(log.rank, 1, n_ranks) - 1
    slots = np.broadcast_to(np.arange(k), log.reward.shape)
    cells = (ranks * k + slots)[filled]
    rows = np.broadcast_to(unit[:, None], log.reward.shape)[filled]
    shape = (n_units, n_ranks * k)
    rewards = sp.csr_matrix((log.reward[filled], (rows, cells)), shape=shape)
    counts = sp.csr_matrix((np.ones(len(cells)), (rows, cells)), shape=shape)
    return rewards, counts


def supported(target: TargetSlates, estimator: str) -> np.ndarray:
    """Per request and slot: the target's item (for the reward-interaction estimators, its
    whole prefix) lies inside the logging candidates, so the weight's expectation is 1."""
    inside = target.rank > 0
    if estimator in ("rips", "snrips"):
        return np.cumprod(inside, axis=1).astype(bool)
    return inside


def contributions(
    log: SlateLog, target: TargetSlates, estimator: str, reward_model: RewardModel | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per request and slot: the estimator's numerator and its weight (the
    self-normalised ones divide a slot's numerators by its weights; the others by the
    number of requests)."""
    filled = log.filled
    reward = np.where(filled, log.reward, 0.0)
    if estimator in ("ips", "snips", "dr"):
        weight = _inverse_propensity(filled & target.match, log.marginal)
    elif estimator in ("rips", "snrips"):
        weight = _inverse_propensity(filled & target.prefix_match, log.prefix)
    elif estimator in POSITION_BASED:
        return _position_based(log, target, reward, reward_model or RewardModel.fit(log))
    else:
        raise ValueError(f"unknown off-policy estimator {estimator!r}: use one of {ESTIMATORS}")
    if estimator != "dr":
        return weight * reward, weight
    model = reward_model or RewardModel.fit(log)
    logged_value = np.where(filled, model.predict(np.where(filled, log.rank, -1)), 0.0)
    direct = model.predict(target.rank)
    return direct + weight * (reward - logged_value), weight


def _position_based(
    log: SlateLog, target: TargetSlates, reward: np.ndarray, model: RewardModel
) -> tuple[np.ndarray, np.ndarray]:
    """Per target slot: the logged reward of the target's item wherever it was shown,
    moved to the target's slot by the examination ratio, over its inclusion probability."""
    at, weight = _shown(log, target)
    ratio = examination_ratio(model.position_effect)[np.arange(at.shape[1])[None, :], at]
    return weight * np.take_along_axis(reward, at, axis=1) * ratio, weight


def _shown(log: SlateLog, target: TargetSlates) -> tuple[np.ndarray, np.ndarray]:
    """Per target slot: the logged slot that showed its item (0 where none did), and the
    position-based weight, 1 / the item's inclusion probability (0 where not shown)."""
    if log.inclusion is None or target.shown_at is None:
        raise NoSupportError(
            "the position-based estimators need each logged item's inclusion propensity and "
            "where the target's items were shown: estimate from a log written by this rewear"
        )
    shown = target.shown_at >= 0
    at = np.where(shown, target.shown_at, 0)
    counted = shown & np.take_along_axis(log.filled, at, axis=1)
    return at, _inverse_propensity(counted, np.take_along_axis(log.inclusion, at, axis=1))


def examination_ratio(examination: np.ndarray) -> np.ndarray:
    """(target slot t, logged slot l) -> examination[t] / examination[l] (0 where the logged
    slot's examination is 0: nothing was ever sold there)."""
    return np.divide(
        examination[:, None],
        examination[None, :],
        out=np.zeros((len(examination), len(examination))),
        where=examination[None, :] > 0,
    )


def _position_based_sums(
    log: SlateLog, target: TargetSlates, resampled: np.ndarray, model: RewardModel
) -> tuple[np.ndarray, np.ndarray]:
    """The position-based numerator per target slot, and its bootstrap replicates with the
    examination refitted on every resample, so that its uncertainty is in the interval."""
    n_units, k = resampled.shape[1], log.reward.shape[1]
    at, weight = _shown(log, target)
    value = weight * np.take_along_axis(np.where(log.filled, log.reward, 0.0), at, axis=1)
    units = np.broadcast_to(log.unit[:, None], at.shape)
    cells = np.arange(k)[None, :] * k + at
    counted = value != 0
    pairs = sp.csr_matrix(
        (value[counted], (units[counted], cells[counted])), shape=(n_units, k * k)
    )
    point = (
        np.asarray(pairs.sum(axis=0)).reshape(k, k) * examination_ratio(model.position_effect)
    ).sum(axis=1)
    rewards, counts = reward_tables(log, log.unit, n_units)
    boot_pairs = np.asarray(pairs.T @ resampled.T).T.reshape(-1, k, k)
    boot_rewards = np.asarray(rewards.T @ resampled.T).T
    boot_counts = np.asarray(counts.T @ resampled.T).T
    boot = np.empty((len(resampled), k))
    for row in range(len(resampled)):
        refitted = RewardModel.from_tables(
            boot_rewards[row].reshape(-1, k), boot_counts[row].reshape(-1, k)
        )
        boot[row] = (boot_pairs[row] * examination_ratio(refitted.position_effect)).sum(axis=1)
    return point, boot


def _inverse_propensity(counted: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    """1 / propensity where a slot counts, 0 elsewhere (unfilled slots' NaN never read)."""
    return np.where(counted, 1.0 / np.where(counted, propensity, 1.0), 0.0)


@dataclass(frozen=True)
class OffPolicyEstimate:
    """An estimator's value per session, with its bootstrap interval."""

    estimator: str
    value: float
    low: float
    high: float
    resamples: int

    def to_dict(self) -> dict[str, float | str | int]:
        return {
            "estimator": self.estimator,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "resamples": self.resamples,
        }


@dataclass(frozen=True)
class Support:
    """How well the log covers the target's lists."""

    #: Share of the target's slots whose item lies inside the logging candidates.
    covered_slots: float
    #: Share of logged slots where the target shows the logged item (independent-item).
    matched_slots: float
    #: Effective sample size of the independent-item weights, as a share of the requests
    #: (1: as good as on-policy data).
    effective_share: float
    #: ... and of the position-based weights (NaN: the log cannot give them).
    effective_share_position_based: float = float("nan")

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class OffPolicyResult:
    estimates: dict[str, OffPolicyEstimate]
    support: Support
    requests: int
    units: int
    #: Per estimator, the bootstrap values (for paired comparisons of two targets).
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def check_support(log: SlateLog) -> None:
    """Refuse a log with no randomisation: a deterministic logging policy gives every
    other list zero support, and an estimate would be a number without meaning."""
    if not log.filled.any():
        raise NoSupportError("the exposure log holds no served slots for these requests")
    if log.deterministic:
        raise NoSupportError(
            "the logged lists were served deterministically (every propensity is 0 or 1), so "
            "no other ranking has support: serve with exploration (experiment.exploration."
            "temperature > 0, e.g. `rewear experiment start --design explore`) and estimate "
            "from those days"
        )


def estimate(
    log: SlateLog,
    target: TargetSlates,
    estimators: tuple[str, ...] = ESTIMATORS,
    resamples: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> OffPolicyResult:
    """Each estimator's value of the target per logged session, with a percentile interval
    from `resamples` Poisson bootstrap resamples of units (the same resamples for every
    estimator and, with the same seed and log, for every target: differences pair)."""
    check_support(log)
    n_units = int(log.unit.max()) + 1
    weights = np.random.default_rng(seed).poisson(1.0, size=(resamples, n_units)).astype(float)
    requests_per_unit = np.bincount(log.unit, minlength=n_units).astype(float)
    reward_model = RewardModel.fit(log) if set(estimators) & set(MODEL_BASED) else None
    estimates, replicates = {}, {}
    position_based_sums = None  # pbm and snpbm share their numerators (and the refits)
    for name in estimators:
        numerator, weight = contributions(log, target, name, reward_model)
        if name in POSITION_BASED and reward_model is not None:
            if position_based_sums is None:
                position_based_sums = _position_based_sums(log, target, weights, reward_model)
            point_num, boot_num = position_based_sums
        else:
            by_unit_num = _by_unit(numerator, log.unit, n_units)
            point_num, boot_num = by_unit_num.sum(axis=0), weights @ by_unit_num
        if name in SELF_NORMALISED:
            by_unit_den = _by_unit(weight, log.unit, n_units)
            by_unit_sup = _by_unit(supported(target, name).astype(float), log.unit, n_units)
            point = _self_normalised(
                point_num,
                by_unit_den.sum(axis=0),
                by_unit_sup.sum(axis=0) / requests_per_unit.sum(),
            )
            boot = _self_normalised(
                boot_num,
                weights @ by_unit_den,
                (weights @ by_unit_sup) / np.maximum(weights @ requests_per_unit, 1.0)[:, None],
            )
        else:
            point = float(point_num.sum() / requests_per_unit.sum())
            boot = boot_num.sum(axis=1) / np.maximum(weights @ requests_per_unit, 1.0)
        low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
        estimates[name] = OffPolicyEstimate(name, float(point), float(low), float(high), resamples)
        replicates[name] = np.asarray(boot, dtype=float)
    return OffPolicyResult(estimates, support(log, target), len(log.unit), n_units, replicates)


def support(log: SlateLog, target: TargetSlates) -> Support:
    filled = log.filled
    shown = target.rank >= 0
    covered = float((target.rank > 0).sum() / max(shown.sum(), 1))
    matched = float((filled & target.match).sum() / max(filled.sum(), 1))
    weight = _inverse_propensity(filled & target.match, log.marginal)
    position_based = float("nan")
    if log.inclusion is not None and target.shown_at is not None:
        position_based = _effective_share(_shown(log, target)[1])
    return Support(covered, matched, _effective_share(weight), position_based)


def _effective_share(weight: np.ndarray) -> float:
    """Mean over slots of the weights' effective sample size, as a share of the requests."""
    per_slot = [
        column.sum() ** 2 / np.square(column).sum() / len(column)
        for column in weight.T
        if column.sum() > 0
    ]
    return float(np.mean(per_slot)) if per_slot else 0.0


def _by_unit(values: np.ndarray, unit: np.ndarray, n_units: int) -> np.ndarray:
    out = np.zeros((n_units, values.shape[1]))
    np.add.at(out, unit, values)
    return out


def _self_normalised(
    numerator: np.ndarray, denominator: np.ndarray, supported_share: np.ndarray
) -> np.ndarray | float:
    """Sum over slots of numerator / weight x the share of requests with support there (a
    slot with no weight counts 0)."""
    ratio = np.divide(
        numerator, denominator, out=np.zeros_like(numerator, dtype=float), where=denominator > 0
    )
    total = (ratio * supported_share).sum(axis=-1)
    return float(total) if np.ndim(total) == 0 else total
