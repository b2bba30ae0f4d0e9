"""Paired bootstrap over users for differences between two models (EVALUATION.md).

Both models are scored on the same users, so each resample draws users with replacement and
takes the mean of the per-user differences a - b; the interval is the percentile interval of
those resampled means. A difference whose interval contains 0 is not significant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

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
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}: expected at least 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}: expected a level strictly between 0 and 1")
    differences = a - b
    n_users = differences.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_INDICES_PER_CHUNK // n_users)
    resampled_means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        users = rng.integers(0, n_users, size=(stop - start, n_users))
        resampled_means[start:stop] = differences[users].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resampled_means, [tail, 1.0 - tail])
    return BootstrapInterval(
        difference=float(differences.mean()),
        low=float(low),
        high=float(high),
        n_users=n_users,
        n_resamples=n_resamples,
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
