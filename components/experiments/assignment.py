"""Who sees which arm: units hashed with the experiment's salt into buckets.

The hash is SHA-256 of `"<salt>:<unit id>"`, its first 8 bytes read big-endian, modulo
`BUCKETS`: any language or a SQL engine can recompute an assignment from the salt alone,
the same unit always lands in the same bucket for one salt, and a new salt reshuffles
everyone independently of the last experiment (no carry-over of who was in treatment).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from components.experiments.schema import CONTROL, TREATMENT

#: 10,000 buckets: a split is set in steps of 0.01 percentage point.
BUCKETS = 10_000


def unit_buckets(unit_ids: Iterable[object], salt: str) -> np.ndarray:
    """The bucket (0..BUCKETS-1) of each unit under `salt`."""
    if not salt:
        raise ValueError("the experiment's salt is empty: give every experiment its own salt")
    prefix = f"{salt}:".encode()
    return np.fromiter(
        (
            int.from_bytes(hashlib.sha256(prefix + str(unit).encode()).digest()[:8], "big")
            % BUCKETS
            for unit in unit_ids
        ),
        dtype=np.int64,
    )


def treatment_buckets(treatment_share: float) -> int:
    """How many of the BUCKETS go to treatment (the lowest-numbered ones)."""
    if not 0.0 < treatment_share < 1.0:
        raise ValueError(
            f"treatment_share {treatment_share} must lie strictly between 0 and 1 "
            "(e.g. 0.5 for an even split)"
        )
    return round(treatment_share * BUCKETS)


def assign_variants(
    unit_ids: Iterable[object], salt: str, treatment_share: float = 0.5
) -> np.ndarray:
    """CONTROL or TREATMENT for each unit (an object array aligned with `unit_ids`)."""
    in_treatment = unit_buckets(unit_ids, salt) < treatment_buckets(treatment_share)
    return np.where(in_treatment, TREATMENT, CONTROL).astype(object)
