"""Time in the synthetic marketplace: int64 microseconds since the epoch (UTC), and the
hour-of-day activity profile that sessions and new listings follow."""

from __future__ import annotations

import numpy as np
import pandas as pd

_US_PER_DAY = 86_400_000_000
_US_PER_SECOND = 1_000_000
#: Relative activity by hour of day (UTC): quiet nights, busy evenings.
_HOURLY_ACTIVITY = np.array(
    [
        *(0.2, 0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 0.6, 0.8, 0.9, 0.9, 1.0),
        *(1.2, 1.1, 0.9, 0.9, 1.0, 1.1, 1.3, 1.6, 1.8, 1.7, 1.2, 0.6),
    ]
)


def _time_of_day(count: int, rng: np.random.Generator) -> np.ndarray:
    """Microseconds after midnight, following the hourly activity profile."""
    hour = rng.choice(24, count, p=_HOURLY_ACTIVITY / _HOURLY_ACTIVITY.sum())
    return ((hour + rng.random(count)) * 3_600 * _US_PER_SECOND).astype(np.int64)


def _utc(value: pd.Timestamp | str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _to_us(stamp: pd.Timestamp) -> int:
    """Microseconds since the epoch."""
    return (stamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)


def _timestamps(us: np.ndarray) -> pd.Series:
    """UTC microsecond timestamps from int64 microseconds since the epoch."""
    return pd.Series(np.asarray(us, dtype=np.int64).astype("datetime64[us]")).dt.tz_localize("UTC")
