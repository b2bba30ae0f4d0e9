"""Hashed assignment: even shares at scale, independent salts, stable units."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from components.experiments.assignment import BUCKETS, assign_variants, unit_buckets
from components.experiments.schema import CONTROL, TREATMENT


@pytest.fixture(scope="module")
def million_ids() -> list[str]:
    return [f"u{index:07d}" for index in range(1_000_000)]


def test_each_arm_gets_half_of_a_million_units_within_0_15_points(million_ids: list[str]) -> None:
    variants = assign_variants(million_ids, "salt-a")
    share = float(np.mean(variants == TREATMENT))
    assert abs(share - 0.5) <= 0.0015, share


def test_two_salts_assign_independently(million_ids: list[str]) -> None:
    first = assign_variants(million_ids, "salt-a") == TREATMENT
    second = assign_variants(million_ids, "salt-b") == TREATMENT
    table = np.array(
        [
            [np.sum(first & second), np.sum(first & ~second)],
            [np.sum(~first & second), np.sum(~first & ~second)],
        ]
    )
    assert chi2_contingency(table)[1] > 0.001
    assert abs(float(np.mean(first == second)) - 0.5) < 0.003


def test_a_unit_keeps_its_bucket_and_shares_follow_the_split() -> None:
    ids = [f"user-{index}" for index in range(20_000)]
    assert np.array_equal(unit_buckets(ids, "s"), unit_buckets(list(reversed(ids)), "s")[::-1])
    assert unit_buckets(ids, "s").max() < BUCKETS
    skewed = assign_variants(ids, "s", treatment_share=0.2)
    assert abs(float(np.mean(skewed == TREATMENT)) - 0.2) < 0.01
    assert set(skewed) == {CONTROL, TREATMENT}


def test_an_empty_salt_or_a_share_outside_zero_and_one_is_refused() -> None:
    with pytest.raises(ValueError, match="salt is empty"):
        assign_variants(["u1"], "")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        assign_variants(["u1"], "s", treatment_share=1.0)
