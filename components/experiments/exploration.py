"""Randomised serving for off-policy evaluation: Plackett-Luce sampling over an arm's top
candidates, with the exact propensities the estimators divide by.

A deterministic ranker logs propensities of 0 or 1, and no estimator can say what another
list would have done. Here the served list is drawn from the arm's own top `m` by
Plackett-Luce (without replacement, each pick in proportion to its weight among the items
left) with weight rank ** (-1 / temperature): the arm's order decides, its score scale does
not, so the same temperature means the same exploration for a LightGBM ranker and for
popularity. Temperature 0 is the deterministic list; the head stays nearly fixed at small
temperatures while the lower slots swap with their neighbours, which is where the cost is
small and the support for another ranker's order is.

Because weights depend only on ranks, the item-position marginals P(rank r at slot j)
depend only on (m, k, temperature): they are computed once per triple (by enumeration
when the slates are few, by a stated number of Monte Carlo draws otherwise) and cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations

import numpy as np

#: Logging policy name of the explored lists (the exposure log's `policy`).
PLACKETT_LUCE = "plackett_luce"
#: Slates enumerated exactly when there are at most this many (m! / (m - k)!).
EXACT_SLATE_LIMIT = 50_000
#: Monte Carlo draws of the marginals otherwise (one cached matrix per (m, k, temperature)).
MARGINAL_DRAWS = 200_000
_DRAW_CHUNK = 20_000


def rank_log_weights(m: int, temperature: float) -> np.ndarray:
    """Log Plackett-Luce weights of ranks 1..m: -log(rank) / temperature."""
    if temperature <= 0:
        raise ValueError(
            f"exploration temperature {temperature!r}: give a positive temperature "
            "(0 serves the deterministic list and needs no sampling)"
        )
    return -np.log(np.arange(1, m + 1, dtype=np.float64)) / temperature


def sample_slates(
    m: int, k: int, temperature: float, n: int, rng: np.random.Generator
) -> np.ndarray:
    """`n` Plackett-Luce slates of `k` of ranks 0..m-1 (0-based), by the Gumbel top-k
    trick (the order of logits + Gumbel noise is a Plackett-Luce draw)."""
    size = min(k, m)
    if temperature == 0:
        return np.tile(np.arange(size), (n, 1))
    logits = rank_log_weights(m, temperature)
    keys = logits[None, :] + rng.gumbel(size=(n, m))
    top = (
        np.argpartition(-keys, size - 1, axis=1)[:, :size]
        if size < m
        else np.tile(np.arange(m), (n, 1))
    )
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def prefix_propensities(slates: np.ndarray, m: int, temperature: float) -> np.ndarray:
    """P(the slate's first j slots exactly as drawn), for every slot j: the cascade
    (reward-interaction) estimator's propensity. Exact: a running product of each pick's
    share of the weight left."""
    slates = np.atleast_2d(slates)
    if temperature == 0:
        deterministic = slates == np.arange(slates.shape[1])[None, :]
        return np.cumprod(deterministic, axis=1).astype(np.float64)
    weights = np.exp(rank_log_weights(m, temperature))
    picked = weights[slates]
    left = weights.sum() - np.concatenate(
        [np.zeros((len(slates), 1)), np.cumsum(picked, axis=1)[:, :-1]], axis=1
    )
    return np.cumprod(picked / left, axis=1)


@lru_cache(maxsize=256)
def _marginals(m: int, k: int, temperature: float, draws: int) -> np.ndarray:
    size = min(k, m)
    if temperature == 0:
        return np.eye(m, size)
    if math.perm(m, size) <= EXACT_SLATE_LIMIT:
        slates = np.array(list(permutations(range(m), size)), dtype=np.int64)
        probability = prefix_propensities(slates, m, temperature)[:, -1]
        matrix = np.zeros((m, size))
        for slot in range(size):
            np.add.at(matrix[:, slot], slates[:, slot], probability)
        return matrix
    rng = np.random.default_rng([m, size, round(temperature * 1e6), draws])
    counts = np.zeros((m, size))
    done = 0
    while done < draws:
        n = min(_DRAW_CHUNK, draws - done)
        slates = sample_slates(m, size, temperature, n, rng)
        for slot in range(size):
            counts[:, slot] += np.bincount(slates[:, slot], minlength=m)
        done += n
    return counts / draws


def position_marginals(
    m: int, k: int, temperature: float, draws: int = MARGINAL_DRAWS
) -> np.ndarray:
    """P(rank r lands in slot j), an (m, min(k, m)) matrix whose columns sum to 1: the
    independent-item estimator's propensity. Exact by enumeration when there are at most
    EXACT_SLATE_LIMIT slates, else from `draws` Monte Carlo slates (a fixed seed per
    triple, so every process logs the same figures). Read-only and cached."""
    if m < 1 or k < 1:
        raise ValueError(f"position marginals need m >= 1 and k >= 1, not m={m}, k={k}")
    matrix = _marginals(int(m), int(k), float(temperature), int(draws))
    matrix.flags.writeable = False
    return matrix


@dataclass(frozen=True)
class ExploredSlate:
    """One explored list: the arm's ranks it shows (0-based, slot order) and, per slot,
    the item-position marginal, the prefix propensity and the item's inclusion
    probability (its marginals summed over the slots)."""

    ranks: np.ndarray
    marginal: np.ndarray
    prefix: np.ndarray
    inclusion: np.ndarray


@dataclass(frozen=True)
class Exploration:
    """Plackett-Luce over the top `top_m` of an arm's list at `temperature`."""

    top_m: int
    temperature: float
    draws: int = MARGINAL_DRAWS

    def __post_init__(self) -> None:
        if self.top_m < 1:
            raise ValueError(f"exploration top_m {self.top_m}: give at least 1")
        if self.temperature < 0:
            raise ValueError(f"exploration temperature {self.temperature}: give 0 or more")

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0

    def draw(self, available: int, k: int, rng: np.random.Generator) -> ExploredSlate:
        """A slate of `k` from an arm's list of `available` candidates: drawn from its
        first max(top_m, k), so that a request for more than top_m still gets k; with
        fewer than `k` available, the whole list, shuffled."""
        m = min(max(self.top_m, k), available)
        size = min(k, m)
        if m == 0:
            empty = np.zeros(0)
            return ExploredSlate(np.zeros(0, dtype=np.int64), empty, empty, empty)
        ranks = sample_slates(m, size, self.temperature, 1, rng)[0]
        marginal = position_marginals(m, size, self.temperature, self.draws)
        return ExploredSlate(
            ranks=ranks,
            marginal=marginal[ranks, np.arange(size)],
            prefix=prefix_propensities(ranks[None, :], m, self.temperature)[0],
            inclusion=marginal[ranks].sum(axis=1),
        )
