"""Paired bootstrap over users for differences between two models (docs/evaluation.md).

Both models are scored on the same users, so each resample draws users with replacement and
takes the mean of the per-user differences a - b; the interval is the percentile interval of
those resampled means. A difference whose interval contains 0 is not significant.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
from scipy import stats

from components.evaluation.beyond_accuracy import (
    exposure_counts,
    exposure_share_statistic,
    seller_gini_statistic,
)

Key = TypeVar("Key", bound=Hashable)

#: Resampled user indices held in memory at once (int64): about 32 MB.
_MAX_INDICES_PER_CHUNK = 4_000_000


@dataclass(frozen=True)
class BootstrapInterval:
    """Mean difference a - b over users with its percentile bootstrap interval."""

    difference: float
    low: float
    high: float
    n_users: int
    n_resamples: int
    confidence: float

    @property
    def significant(self) -> bool:
        """Whether the interval excludes 0."""
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant}


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Bootstrap the mean of a - b (per-user values of two models on the same users).

    Users are resampled with replacement in chunks of resamples, so memory stays bounded for
    any number of users; the same seed and inputs always give the same interval.
    """
    return paired_bootstraps({"": (a, b)}, n_resamples, confidence, seed)[""]


def paired_bootstraps(
    pairs: Mapping[Key, tuple[np.ndarray, np.ndarray]],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[Key, BootstrapInterval]:
    """`paired_bootstrap` of each (a, b) pair, all on the same users: each chunk of resampled
    users is drawn once and shared, so many metrics and baselines cost one set of draws.
    Each interval equals `paired_bootstrap(a, b, n_resamples, confidence, seed)`."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}: expected at least 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: expected a level strictly between 0 and 1")
    differences = {name: _differences(a, b) for name, (a, b) in pairs.items()}
    sizes = {values.size for values in differences.values()}
    if len(sizes) > 1:
        raise ValueError(f"pairs hold {sorted(sizes)} users: expected all on the same users")
    if not differences:
        return {}
    n_users = sizes.pop()
    resampled_means = {name: np.empty(n_resamples) for name in differences}
    for start, users in _resampled_users(n_users, n_resamples, seed):
        for name, values in differences.items():
            resampled_means[name][start : start + len(users)] = values[users].mean(axis=1)
    return {
        name: _interval(float(values.mean()), resampled_means[name], n_users, confidence)
        for name, values in differences.items()
    }


def _differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"a has shape {a.shape}, b {b.shape}: expected two 1-D arrays of per-user values "
            "for the same users, in the same order"
        )
    if a.size == 0:
        raise ValueError("a and b are empty: the bootstrap needs at least one user")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(
            "a or b holds NaN or infinite values: drop users whose metric is undefined first "
            "(compare_per_user does so)"
        )
    return a - b


#: Groups of users the jackknife of a list-level statistic deletes one at a time.
JACKKNIFE_GROUPS = 50


def paired_jackknife_statistic(
    a: WeightedStatistic,
    b: WeightedStatistic,
    n_users: int,
    confidence: float = 0.95,
    seed: int = 0,
    groups: int = JACKKNIFE_GROUPS,
) -> BootstrapInterval:
    """a - b for statistics of the whole set of lists rather than means of per-user values
    (the Gini of seller exposure, the share of slots on new listings), with a normal
    interval from the delete-a-group jackknife over users.

    Users fall into `groups` seeded random groups; each replicate recomputes both
    statistics without one group (`a` and `b` take user weights (replicates, n_users) and
    return one value per replicate), and the spread of the replicates gives the standard
    error. Not the bootstrap: a bootstrap resample counts a user drawn twice with their list
    twice, which concentrates exposure by itself, so on sparse exposure a Gini shifts under
    resampling even when the arms do not differ and the percentile interval can leave out
    its own point. A replicate only leaves users out. `n_resamples` of the result: the
    groups.
    """
    if n_users < 1:
        raise ValueError("n_users=0: the jackknife needs at least one user")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: expected a level strictly between 0 and 1")
    everyone = np.ones((1, n_users))
    difference = float(a(everyone)[0] - b(everyone)[0])
    if not np.isfinite(difference):
        raise ValueError("the statistic is undefined on the full set of users (no filled slot?)")
    groups = min(groups, n_users)
    if groups < 2:
        return BootstrapInterval(difference, difference, difference, n_users, 0, confidence)
    membership = np.random.default_rng(seed).permutation(n_users) % groups
    weights = (membership[None, :] != np.arange(groups)[:, None]).astype(float)
    replicates = a(weights) - b(weights)
    replicates = replicates[np.isfinite(replicates)]
    used = len(replicates)
    spread = float(np.sqrt((used - 1) / used * np.square(replicates - replicates.mean()).sum()))
    half_width = float(stats.norm.ppf(0.5 + confidence / 2.0)) * spread
    return BootstrapInterval(
        difference=difference,
        low=difference - half_width,
        high=difference + half_width,
        n_users=n_users,
        n_resamples=used,
        confidence=confidence,
    )


#: A statistic of a weighted set of users' lists: weights (resamples, n_users) -> (resamples,).
WeightedStatistic = Callable[[np.ndarray], np.ndarray]


def _resampled_users(n_users: int, n_resamples: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first resample, user indices (resamples, n_users)) in chunks of bounded memory."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_INDICES_PER_CHUNK // n_users)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        yield start, rng.integers(0, n_users, size=(stop - start, n_users))


def _interval(
    difference: float, resampled: np.ndarray, n_users: int, confidence: float
) -> BootstrapInterval:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return BootstrapInterval(
        difference=difference,
        low=float(low),
        high=float(high),
        n_users=n_users,
        n_resamples=int(resampled.size),
        confidence=confidence,
    )


def compare_per_user(
    model: dict[str, np.ndarray],
    other: dict[str, np.ndarray],
    metrics: list[str],
    mask: np.ndarray | None = None,
    **bootstrap_options: Any,
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of model - other for each metric, as dicts ready to log.

    `mask` (bool per user) selects the users to compare, e.g. users with a test positive or a
    segment such as cold users. Users whose value is NaN for either model (metric undefined,
    e.g. diversity of a one-item list) are dropped per metric. Each entry also holds both
    means over the compared users. `bootstrap_options` go to `paired_bootstrap`.
    """
    results: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        missing = [
            name for name, values in (("model", model), ("other", other)) if metric not in values
        ]
        if missing:
            raise ValueError(
                f"metric {metric!r} is missing from {' and '.join(missing)}: "
                "compute it per user for both models before comparing"
            )
        a = np.asarray(model[metric], dtype=float)
        b = np.asarray(other[metric], dtype=float)
        if a.shape != b.shape:
            raise ValueError(
                f"{metric!r} has {a.shape} values for the model and {b.shape} for the other: "
                "expected both on the same users"
            )
        keep = np.isfinite(a) & np.isfinite(b)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != a.shape:
                raise ValueError(f"mask has shape {mask.shape}: expected {a.shape}, one per user")
            keep &= mask
        interval = paired_bootstrap(a[keep], b[keep], **bootstrap_options)
        results[metric] = {
            "model": float(a[keep].mean()),
            "other": float(b[keep].mean()),
            **interval.to_dict(),
        }
    return results


def compare_exposure(
    model_ranked: np.ndarray,
    other_ranked: np.ndarray,
    *,
    k: int,
    seller_codes: np.ndarray | None,
    new_item_flags: np.ndarray | None,
    recommendable: np.ndarray,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of model - other for the exposure figures of the top-k lists:
    `gini_sellers@k` (sellers with a recommendable or a recommended listing) and
    `new_item_exposure@k`, each entry with both values (as `compare_per_user`'s).

    Neither is a mean of per-user values, so each jackknife replicate recomputes the figure
    from the lists of the users it keeps (`paired_jackknife_statistic`). Figures whose input
    is None (no seller ids, no listing dates) are left out.
    """
    model_ranked = np.asarray(model_ranked)[:, :k]
    other_ranked = np.asarray(other_ranked)[:, :k]
    if model_ranked.shape[0] != other_ranked.shape[0]:
        raise ValueError(
            f"model lists for {model_ranked.shape[0]} users, other lists for "
            f"{other_ranked.shape[0]}: expected both on the same users"
        )
    statistics: dict[str, tuple[WeightedStatistic, WeightedStatistic]] = {}
    if seller_codes is not None:
        exposed = (exposure_counts(model_ranked, len(recommendable)) > 0) | (
            exposure_counts(other_ranked, len(recommendable)) > 0
        )
        sellers = np.asarray(seller_codes, dtype=np.int64)
        counted = np.unique(sellers[(np.asarray(recommendable, bool) | exposed) & (sellers >= 0)])
    if seller_codes is not None and counted.size:
        statistics[f"gini_sellers@{k}"] = (
            seller_gini_statistic(model_ranked, sellers, counted),
            seller_gini_statistic(other_ranked, sellers, counted),
        )
    if new_item_flags is not None:
        statistics[f"new_item_exposure@{k}"] = (
            exposure_share_statistic(model_ranked, new_item_flags),
            exposure_share_statistic(other_ranked, new_item_flags),
        )
    n_users = model_ranked.shape[0]
    everyone = np.ones((1, n_users))
    results: dict[str, dict[str, Any]] = {}
    for metric, (model_statistic, other_statistic) in statistics.items():
        interval = paired_jackknife_statistic(
            model_statistic, other_statistic, n_users, confidence, seed
        )
        results[metric] = {
            "model": float(model_statistic(everyone)[0]),
            "other": float(other_statistic(everyone)[0]),
            **interval.to_dict(),
        }
    return results
