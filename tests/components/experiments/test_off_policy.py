"""Slate off-policy estimators on a problem small enough to enumerate: every slate the
logging policy can serve, with its exact probability, so an estimator's expectation is a
sum, not a sample."""

from __future__ import annotations

from itertools import permutations

import numpy as np
import pytest

from components.experiments.exploration import (
    position_marginals,
    prefix_propensities,
    sample_slates,
)
from components.experiments.off_policy import (
    NoSupportError,
    RewardModel,
    SlateLog,
    TargetSlates,
    contributions,
    estimate,
)

M, K, TEMPERATURE = 5, 3, 0.7
#: Relevance of the logging list's ranks 0..4, and the examination of the slots.
RELEVANCE = np.array([0.30, 0.50, 0.10, 0.40, 0.20])
EXAMINATION = np.array([1.0, 0.6, 0.4])
#: The target ranking (logging ranks, 0-based): never the logging policy's own top 3.
TARGET = np.array([1, 3, 0])


def position_based(slates: np.ndarray) -> np.ndarray:
    return RELEVANCE[slates] * EXAMINATION[None, : slates.shape[1]]


def cascade(slates: np.ndarray) -> np.ndarray:
    """Go down the list; a purchase (probability = relevance) ends it."""
    buy = RELEVANCE[slates]
    reach = np.cumprod(np.c_[np.ones(len(slates)), 1 - buy[:, :-1]], axis=1)
    return reach * buy


def log_and_target(slates: np.ndarray, rewards: np.ndarray) -> tuple[SlateLog, TargetSlates]:
    marginals = position_marginals(M, K, TEMPERATURE)
    n = len(slates)
    log = SlateLog(
        unit=np.arange(n),
        reward=rewards,
        marginal=marginals[slates, np.arange(K)],
        prefix=prefix_propensities(slates, M, TEMPERATURE),
        rank=slates + 1,
        candidates=np.full(n, M),
        inclusion=marginals.sum(axis=1)[slates],
    )
    match = slates == TARGET[None, :]
    shown = slates[:, None, :] == TARGET[None, :, None]
    target = TargetSlates(
        match=match,
        prefix_match=np.cumprod(match, axis=1).astype(bool),
        rank=np.tile(TARGET + 1, (n, 1)),
        shown_at=np.where(shown.any(axis=2), shown.argmax(axis=2), -1),
    )
    return log, target


def expectation(estimator: str, model, reward_model: RewardModel | None = None) -> float:
    """The estimator's exact expectation under the logging policy (linear estimators:
    the expected reward of a slate can stand for its draws)."""
    slates = np.array(list(permutations(range(M), K)))
    probability = prefix_propensities(slates, M, TEMPERATURE)[:, -1]
    log, target = log_and_target(slates, model(slates))
    numerator, _ = contributions(log, target, estimator, reward_model)
    return float(probability @ numerator.sum(axis=1))


@pytest.mark.parametrize("estimator", ["ips", "rips", "dr"])
def test_unbiased_under_the_position_based_model(estimator: str) -> None:
    truth = position_based(TARGET[None, :]).sum()
    wrong_model = RewardModel(np.linspace(0.9, 0.1, M), np.array([0.2, 1.5, 0.7]))
    assert expectation(estimator, position_based, wrong_model) == pytest.approx(truth, rel=1e-9)


def test_position_based_is_unbiased_with_the_right_examination_and_only_then() -> None:
    """`pbm` moves a logged reward to the target's slot by the examination ratio: exact in
    expectation when the reward model's position effects are the examination (up to
    scale, and whatever its rank effects), biased when they are not."""
    truth = position_based(TARGET[None, :]).sum()
    right = RewardModel(np.linspace(0.9, 0.1, M), 3.0 * EXAMINATION)
    assert expectation("pbm", position_based, right) == pytest.approx(truth, rel=1e-9)
    flat = RewardModel(np.ones(M), np.ones(K))
    assert abs(expectation("pbm", position_based, flat) - truth) > 0.02


def test_position_based_weights_have_expectation_one_per_target_slot() -> None:
    slates = np.array(list(permutations(range(M), K)))
    probability = prefix_propensities(slates, M, TEMPERATURE)[:, -1]
    log, target = log_and_target(slates, position_based(slates))
    _, weight = contributions(log, target, "pbm", RewardModel(np.ones(M), EXAMINATION))
    np.testing.assert_allclose(probability @ weight, np.ones(K), rtol=1e-9)
    # ... and far more of the log counts than for the independent-item weights.
    _, same_slot = contributions(log, target, "ips")
    assert probability @ (weight > 0).sum(axis=1) > 2 * probability @ (same_slot > 0).sum(axis=1)


def test_position_based_refuses_a_log_without_inclusion_propensities() -> None:
    slates = sample_slates(M, K, TEMPERATURE, 200, np.random.default_rng(3))
    log, target = log_and_target(slates, position_based(slates))
    older = SlateLog(log.unit, log.reward, log.marginal, log.prefix, log.rank, log.candidates)
    with pytest.raises(NoSupportError, match="inclusion propensity"):
        estimate(older, target, estimators=("snpbm",))


def test_reward_interaction_is_unbiased_under_the_cascade_and_independent_item_is_not() -> None:
    truth = cascade(TARGET[None, :]).sum()
    assert expectation("rips", cascade) == pytest.approx(truth, rel=1e-9)
    # The independent-item estimator credits each slot as if nothing above it mattered.
    assert abs(expectation("ips", cascade) - truth) > 0.02


@pytest.mark.parametrize(
    ("estimator", "model"),
    [
        ("snips", position_based),
        ("snrips", position_based),
        ("snrips", cascade),
        ("dr", position_based),
        ("snpbm", position_based),
    ],
)
def test_self_normalised_and_doubly_robust_estimates_converge(estimator: str, model) -> None:
    """Sampled logs: the interval covers the truth and the estimate is within 5% of it."""
    truth = model(TARGET[None, :]).sum()
    rng = np.random.default_rng(4)
    slates = sample_slates(M, K, TEMPERATURE, 40_000, rng)
    if model is cascade:  # each slot would sell with its relevance; a purchase ends it
        rewards = (rng.random(slates.shape) < RELEVANCE[slates]).astype(float)
        rewards *= np.cumprod(np.c_[np.ones(len(rewards)), 1 - rewards[:, :-1]], axis=1)
    else:
        rewards = (rng.random(slates.shape) < model(slates)).astype(float)
    log, target = log_and_target(slates, rewards)
    result = estimate(log, target, estimators=(estimator,), resamples=100)
    found = result.estimates[estimator]
    if estimator == "dr" and model is cascade:
        assert found.value == pytest.approx(truth, rel=0.25)
        return
    assert found.low <= truth <= found.high
    assert found.value == pytest.approx(truth, rel=0.05)


def test_bootstrap_resamples_units_and_pairs_targets() -> None:
    rng = np.random.default_rng(5)
    slates = sample_slates(M, K, TEMPERATURE, 6_000, rng)
    rewards = (rng.random(slates.shape) < position_based(slates)).astype(float)
    log, target = log_and_target(slates, rewards)
    per_user = SlateLog(
        unit=np.arange(len(slates)) // 3,
        reward=log.reward,
        marginal=log.marginal,
        prefix=log.prefix,
        rank=log.rank,
        candidates=log.candidates,
        inclusion=log.inclusion,
    )
    result = estimate(per_user, target, resamples=50, seed=9)
    assert result.units == 2_000 and result.requests == 6_000
    again = estimate(per_user, target, resamples=50, seed=9)
    np.testing.assert_array_equal(result.replicates["snips"], again.replicates["snips"])
    for found in result.estimates.values():
        assert found.low < found.value < found.high
    assert 0 < result.support.effective_share < 1
    assert result.support.effective_share < result.support.effective_share_position_based < 1
    assert result.support.covered_slots == 1.0


def test_deterministic_logging_is_refused() -> None:
    slates = np.tile(np.arange(K), (100, 1))
    log = SlateLog(
        unit=np.arange(100),
        reward=np.zeros((100, K)),
        marginal=np.ones((100, K)),
        prefix=np.ones((100, K)),
        rank=slates + 1,
        candidates=np.full(100, M),
    )
    target = TargetSlates(
        match=np.zeros((100, K), bool),
        prefix_match=np.zeros((100, K), bool),
        rank=np.tile(TARGET + 1, (100, 1)),
    )
    with pytest.raises(NoSupportError, match="deterministically"):
        estimate(log, target)


def test_the_reward_model_recovers_a_rank_by_position_table() -> None:
    rng = np.random.default_rng(6)
    slates = sample_slates(M, K, 2.0, 50_000, rng)
    rewards = (rng.random(slates.shape) < position_based(slates)).astype(float)
    log, _ = log_and_target(slates, rewards)
    model = RewardModel.fit(log, shrinkage=1.0)
    predicted = model.predict(slates[:1000] + 1)
    np.testing.assert_allclose(predicted, position_based(slates[:1000]), atol=0.02)


def test_self_normalising_leaves_unsupported_slots_at_zero_as_ips_does() -> None:
    """A target item outside the logging candidates has no support: no estimator sees its
    reward, and self-normalising must not credit it with the supported slots' average."""
    rng = np.random.default_rng(7)
    slates = sample_slates(M, K, TEMPERATURE, 40_000, rng)
    rewards = (rng.random(slates.shape) < position_based(slates)).astype(float)
    log, target = log_and_target(slates, rewards)
    rank = target.rank.copy()
    rank[:, 2] = 0  # the target's third item was never a logging candidate
    match = target.match.copy()
    match[:, 2] = False
    unsupported = TargetSlates(match, np.cumprod(match, axis=1).astype(bool), rank)
    supported_truth = position_based(TARGET[None, :2]).sum()
    result = estimate(log, unsupported, estimators=("ips", "snips"), resamples=50)
    for name in ("ips", "snips"):
        assert result.estimates[name].value == pytest.approx(supported_truth, rel=0.03), name
    assert result.support.covered_slots == pytest.approx(2 / 3)
