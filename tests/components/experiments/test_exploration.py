"""Plackett-Luce exploration: draws follow the rank weights, propensities are exact."""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import pytest

from components.experiments.exploration import (
    Exploration,
    position_marginals,
    prefix_propensities,
    sample_slates,
)


def test_slate_probabilities_sum_to_one_and_match_the_draws() -> None:
    m, k, temperature = 5, 3, 0.8
    slates = np.array(list(permutations(range(m), k)))
    probability = prefix_propensities(slates, m, temperature)[:, -1]
    assert probability.sum() == pytest.approx(1.0, abs=1e-12)
    draws = sample_slates(m, k, temperature, 100_000, np.random.default_rng(0))
    codes = draws @ (m ** np.arange(k))
    observed = np.bincount(codes, minlength=m**k)[slates @ (m ** np.arange(k))] / len(draws)
    assert np.abs(observed - probability).max() < 0.005
    # The first pick is rank r with probability r ** (-1 / T) / sum.
    weights = np.arange(1, m + 1) ** (-1 / temperature)
    assert np.mean(draws[:, 0] == 0) == pytest.approx(weights[0] / weights.sum(), abs=0.005)


def test_marginals_are_doubly_sub_stochastic_and_exact_when_enumerable() -> None:
    m, k, temperature = 6, 3, 0.5
    exact = position_marginals(m, k, temperature)
    assert exact.shape == (m, k)
    np.testing.assert_allclose(exact.sum(axis=0), 1.0, atol=1e-12)
    assert (exact.sum(axis=1) <= 1 + 1e-12).all()
    # By hand: slot 0 is the first pick's distribution.
    weights = np.arange(1, m + 1) ** (-1 / temperature)
    np.testing.assert_allclose(exact[:, 0], weights / weights.sum())
    # Monte Carlo (forced by a fresh draws count) agrees within its error.
    from components.experiments import exploration

    limit = exploration.EXACT_SLATE_LIMIT
    exploration.EXACT_SLATE_LIMIT = 0
    try:
        sampled = position_marginals(m, k, temperature, draws=100_000)
    finally:
        exploration.EXACT_SLATE_LIMIT = limit
    assert math.perm(m, k) <= limit
    np.testing.assert_allclose(sampled.sum(axis=0), 1.0)
    assert np.abs(sampled - exact).max() < 0.006


def test_zero_temperature_is_the_deterministic_list() -> None:
    exploration = Exploration(top_m=50, temperature=0.0)
    slate = exploration.draw(available=60, k=20, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(slate.ranks, np.arange(20))
    np.testing.assert_array_equal(slate.marginal, np.ones(20))
    np.testing.assert_array_equal(slate.prefix, np.ones(20))


def test_a_draw_logs_its_own_propensities() -> None:
    exploration = Exploration(top_m=8, temperature=1.0)
    slate = exploration.draw(available=30, k=4, rng=np.random.default_rng(2))
    assert len(set(slate.ranks.tolist())) == 4 and slate.ranks.max() < 8
    marginals = position_marginals(8, 4, 1.0)
    np.testing.assert_allclose(slate.marginal, marginals[slate.ranks, np.arange(4)])
    assert (np.diff(slate.prefix) < 0).all()
    assert slate.prefix[0] == pytest.approx(slate.marginal[0])
    # A request for more than top m still gets k slots, drawn from the first k.
    long = Exploration(top_m=3, temperature=1.0).draw(
        available=10, k=5, rng=np.random.default_rng(4)
    )
    assert sorted(long.ranks.tolist()) == [0, 1, 2, 3, 4]
    # Fewer candidates than the top m: the draw is over what there is.
    short = exploration.draw(available=3, k=4, rng=np.random.default_rng(3))
    assert sorted(short.ranks.tolist()) == [0, 1, 2]
    assert short.prefix[-1] == pytest.approx(prefix_propensities(short.ranks, 3, 1.0)[0, -1])


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature"):
        Exploration(top_m=5, temperature=-1)
    with pytest.raises(ValueError, match="top_m"):
        Exploration(top_m=0, temperature=1)
