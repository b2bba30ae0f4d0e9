"""The data phase's settings: where the interactions come from (`source`), which rows
are refused (`validation`) and how the snapshot is cut in time (`split`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    model_validator,
)

from components.config.base import CalendarDate, Duration, StrictModel


class SyntheticSourceConfig(StrictModel):
    """The built-in synthetic marketplace (see components.data.synthetic).

    The defaults give about 4k users, 30k listings and 430k events in a few seconds: big
    enough for every model to find real signal, small enough for the demo run. Supply
    (sellers, listings) left null scales with `n_users`, so that overriding only
    `n_users` keeps the market balanced (most listings still sell within days).
    """

    kind: Literal["synthetic"] = "synthetic"
    seed: int = 7
    n_users: int = Field(4_000, ge=10)
    #: Sellers; listing counts per seller are long-tailed (a few power sellers).
    #: Null: 0.75 per user.
    n_sellers: int | None = Field(None, ge=2)
    n_days: int = Field(60, ge=7)
    #: Mean new listings per day (Poisson, busier at weekends). Null: 0.1125 per user.
    listings_per_day: int | None = Field(None, ge=5)
    #: Mean sessions per joined user per day (scaled by each user's activity level).
    sessions_per_user_day: float = Field(0.35, gt=0, le=5)
    #: Mean listings viewed per session (1 + Poisson).
    views_per_session: float = Field(6.0, gt=0)
    start: CalendarDate = "2026-01-01"
    #: Listings already live at `start`, created over the 14 days before it.
    #: Null: 0.75 per user.
    initial_listings: int | None = Field(None, ge=0)
    #: Share of users who joined before `start`; the others join uniformly over the period.
    initial_user_share: float = Field(0.5, ge=0, le=1)
    #: Standard deviation of the weekly random walk of users' category log-preferences.
    taste_drift: float = Field(0.3, ge=0)
    #: Time constant (days) of the freshness decay of a listing's visibility.
    freshness_days: float = Field(4.0, gt=0)
    #: Share of sessions that browse the feed with only a weak pull of the user's taste.
    browse_share: float = Field(0.2, ge=0, le=1)
    #: Listings of one category the feed surfaces to a slot's sessions (drawn by freshness,
    #: popularity and appeal when more are live); sessions choose among these. Bounds a
    #: session's cost whatever the catalogue size, so generation grows with the events.
    feed_depth: int = Field(1_000, ge=10)


class MovieLens100kSourceConfig(StrictModel):
    """The MovieLens-100K folder (u.data, u.item, u.user)."""

    kind: Literal["movielens_100k"] = "movielens_100k"
    path: Path


class ColumnMapping(StrictModel):
    """Source column name for each canonical column; missing optional columns become null."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    ts: str = "ts"
    event: str | None = None
    weight: str | None = None
    #: "auto" detects epoch seconds / milliseconds / ISO-8601 strings.
    ts_unit: Literal["auto", "s", "ms", "iso"] = "auto"
    default_event: str = "interaction"


class InteractionsFileSourceConfig(StrictModel):
    """Generic CSV or Parquet interactions, with optional items and users files."""

    kind: Literal["interactions_file"] = "interactions_file"
    interactions: Path
    items: Path | None = None
    users: Path | None = None
    columns: ColumnMapping = ColumnMapping()
    item_columns: dict[str, str] = Field(
        default_factory=dict, description="canonical item column -> source column"
    )
    user_columns: dict[str, str] = Field(
        default_factory=dict, description="canonical user column -> source column"
    )


class FixedSplitSourceConfig(StrictModel):
    """Fixed benchmark split: train/valid/test files of `user_id item_id item_id ...` lines."""

    kind: Literal["fixed_split"] = "fixed_split"
    path: Path
    train_file: str = "train.txt"
    valid_file: str | None = "valid.txt"
    test_file: str = "test.txt"


SourceConfig = Annotated[
    SyntheticSourceConfig
    | MovieLens100kSourceConfig
    | InteractionsFileSourceConfig
    | FixedSplitSourceConfig,
    Field(discriminator="kind"),
]


class ValidationConfig(StrictModel):
    """Bad rows are quarantined; above `max_bad_share` of any table the run fails.

    A timestamp after the ingestion time plus `future_tolerance`, or before `min_timestamp`,
    is a bad row: a date in the future or near epoch 0 is an export bug, not an event.
    """

    max_bad_share: float = Field(0.05, ge=0, le=1)
    #: How many offending rows an error message shows.
    examples_in_error: int = Field(5, ge=1, le=50)
    #: Earliest plausible timestamp (UTC) in any table: catches epoch-0 placeholders and
    #: epoch seconds read as milliseconds (MovieLens-100K starts in 1997). Null: no floor.
    min_timestamp: CalendarDate | None = "1990-01-01"
    #: How far after the ingestion time a timestamp may lie: clock skew, or local times
    #: read as UTC (at most 14h). Null: no bound.
    future_tolerance: Duration | None = "1D"
    #: Interaction rows equal in every column to an earlier row (a double export, a retried
    #: write): `drop` keeps the first (counted in the report, not a bad row), `quarantine`
    #: sets the copies apart as bad rows (they count towards `max_bad_share`), `keep` counts
    #: them and trains on them (when repeats are real events).
    duplicate_events: Literal["drop", "quarantine", "keep"] = "drop"


class SplitConfig(StrictModel):
    """Temporal global cut-offs (train < valid < test) by duration or by share of the time span.

    `protocol: fixed` passes through a split given by the source.
    """

    protocol: Literal["temporal", "fixed"] = "temporal"
    valid_duration: Duration | None = "7D"
    test_duration: Duration | None = "7D"
    valid_fraction: float | None = Field(None, gt=0, lt=1)
    test_fraction: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_way_to_cut(self) -> SplitConfig:
        if self.protocol == "fixed":
            return self
        by_fraction = self.valid_fraction is not None or self.test_fraction is not None
        if by_fraction and (self.valid_fraction is None or self.test_fraction is None):
            raise ValueError("split: give both valid_fraction and test_fraction, or neither")
        if by_fraction and self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("split: valid_fraction + test_fraction must be below 1")
        if not by_fraction and (self.valid_duration is None or self.test_duration is None):
            raise ValueError(
                "split: give valid_duration and test_duration (e.g. '7D'), "
                "or valid_fraction and test_fraction"
            )
        return self

    @property
    def by_fraction(self) -> bool:
        return self.valid_fraction is not None
