"""Kept for tests/flows/test_orchestration.py, which imports the market helpers from here:
they live in tests/flows/conftest.py (remove this module once it imports them from there)."""

from tests.flows.conftest import (  # noqa: F401
    SMALL_MARKET,
    TWO_TOWER_OVERRIDES,
    last_moment,
    small_market,
    write_market,
)
