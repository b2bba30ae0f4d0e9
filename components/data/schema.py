"""The canonical tables every source is mapped onto (docs/data.md).

Ids are strings so that any marketplace's keys fit; timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

INTERACTIONS = "interactions"
ITEMS = "items"
USERS = "users"
TABLE_NAMES = (INTERACTIONS, ITEMS, USERS)

#: Marketplace event types, weakest to strongest signal.
MARKETPLACE_EVENTS = ("view", "like", "save", "add_to_bag", "purchase")
#: Explicit-feedback event used by rating datasets such as MovieLens.
RATING_EVENT = "rating"
#: Implicit interaction with no type, as in fixed-split benchmark files.
INTERACTION_EVENT = "interaction"
KNOWN_EVENTS = (*MARKETPLACE_EVENTS, RATING_EVENT, INTERACTION_EVENT)

INTERACTION_COLUMNS = ("user_id", "item_id", "ts", "event", "weight")
ITEM_COLUMNS = (
    "item_id",
    "seller_id",
    "category",
    "subcategory",
    "brand",
    "size",
    "condition",
    "colour",
    "price",
    "title",
    "created_at",
    "sold_at",
)
ITEM_TEXT_COLUMNS = (
    "seller_id",
    "category",
    "subcategory",
    "brand",
    "size",
    "condition",
    "colour",
    "title",
)
USER_COLUMNS = ("user_id", "created_at", "country")

#: Optional interactions column carried by fixed-split sources ("train" / "valid" / "test").
SPLIT_COLUMN = "split"
FIXED_SPLITS = ("train", "valid", "test")

TIMESTAMP_DTYPE = "datetime64[us, UTC]"


@dataclass(frozen=True)
class CanonicalTables:
    """One marketplace's data in canonical form: what adapters return and snapshots hold."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    #: Free-form description of where the data came from (recorded in the snapshot manifest).
    source: dict[str, object] = field(default_factory=dict)

    def table(self, name: str) -> pd.DataFrame:
        return {INTERACTIONS: self.interactions, ITEMS: self.items, USERS: self.users}[name]

    def replace(self, **tables: pd.DataFrame) -> CanonicalTables:
        merged = {
            INTERACTIONS: self.interactions,
            ITEMS: self.items,
            USERS: self.users,
            **tables,
        }
        return CanonicalTables(source=self.source, **merged)

    @property
    def has_fixed_split(self) -> bool:
        return SPLIT_COLUMN in self.interactions.columns


def to_utc(values: pd.Series) -> pd.Series:
    """Coerce a datetime-like series to the canonical UTC microsecond dtype."""
    converted = pd.to_datetime(values, utc=True)
    return converted.astype(TIMESTAMP_DTYPE)


def canonicalise(tables: CanonicalTables) -> CanonicalTables:
    """Fill missing optional columns with nulls and coerce dtypes, so every source hashes
    and validates the same way. Required columns are left missing for validation to name."""
    interactions = tables.interactions.copy()
    for column in ("user_id", "item_id", "event"):
        if column in interactions:
            interactions[column] = _as_str(interactions[column])
    if "ts" in interactions:
        interactions["ts"] = _coerce_timestamps(interactions["ts"])
    if "weight" in interactions:
        interactions["weight"] = pd.to_numeric(interactions["weight"], errors="coerce").astype(
            "float64"
        )
    items = tables.items.copy()
    for column in ITEM_COLUMNS:
        if column not in items and column != "item_id":
            items[column] = pd.NA
    for column in ("item_id", *ITEM_TEXT_COLUMNS):
        if column in items:
            items[column] = _as_str(items[column])
    items["price"] = pd.to_numeric(items["price"], errors="coerce").astype("float64")
    for column in ("created_at", "sold_at"):
        items[column] = _coerce_timestamps(items[column])
    users = tables.users.copy()
    for column in USER_COLUMNS:
        if column not in users and column != "user_id":
            users[column] = pd.NA
    if "user_id" in users:
        users["user_id"] = _as_str(users["user_id"])
    users["country"] = _as_str(users["country"])
    users["created_at"] = _coerce_timestamps(users["created_at"])
    ordered_items = [c for c in ITEM_COLUMNS if c in items] + [
        c for c in items.columns if c not in ITEM_COLUMNS
    ]
    ordered_users = [c for c in USER_COLUMNS if c in users] + [
        c for c in users.columns if c not in USER_COLUMNS
    ]
    return CanonicalTables(
        interactions=interactions.reset_index(drop=True),
        items=items[ordered_items].reset_index(drop=True),
        users=users[ordered_users].reset_index(drop=True),
        source=tables.source,
    )


def _as_str(values: pd.Series) -> pd.Series:
    """Strings with real nulls (not the text 'nan'), whatever the input dtype."""
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.na_value is pd.NA:
        return values
    result = values.astype("object")
    mask = values.isna()
    result = result.where(mask, values.astype(str))
    return result.astype("string")


def _coerce_timestamps(values: pd.Series) -> pd.Series:
    """Leave unparseable values as-is (validation reports them); convert parseable ones."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.astype(TIMESTAMP_DTYPE)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.dt.tz_localize("UTC").astype(TIMESTAMP_DTYPE)
    if values.isna().all():
        return pd.Series(pd.NaT, index=values.index, dtype=TIMESTAMP_DTYPE)
    try:
        return pd.to_datetime(values, utc=True, format="ISO8601").astype(TIMESTAMP_DTYPE)
    except (ValueError, TypeError):
        return values
