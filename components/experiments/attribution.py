"""What users did with what they were shown: each outcome (a like, a purchase, ...) is
credited to the latest exposure of that item to that user within the event's window.

The window differs by event because the delay does: a view follows the slot within
seconds, a purchase of a one-of-a-kind listing may come days after it was first shown. An
interaction with no exposure in its window is organic (search, a shared link) and is left
out, so a readout compares only what the arms' lists could have caused.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from components.config import ExperimentConfig
from components.data.schema import INTERACTION_COLUMNS, KNOWN_EVENTS, TIMESTAMP_DTYPE

#: How long after a slot was served an event still counts as its outcome (the config's
#: defaults, `experiment.attribution_windows`).
DEFAULT_ATTRIBUTION_WINDOWS: dict[str, pd.Timedelta] = {
    event: pd.Timedelta(window) for event, window in ExperimentConfig().attribution_windows.items()
}
#: The exposure's columns each attributed interaction carries.
EXPOSURE_CONTEXT_COLUMNS = (
    "request_id",
    "served_at",
    "experiment_id",
    "variant",
    "team",
    "position",
    "model_version",
    "policy",
    "propensity",
)
ATTRIBUTED_COLUMNS = (*INTERACTION_COLUMNS, *EXPOSURE_CONTEXT_COLUMNS)
_KEY = "_attribution_key"
_AT = "_attribution_at"


def validate_windows(windows: Mapping[str, pd.Timedelta | str]) -> dict[str, pd.Timedelta]:
    """The windows as Timedeltas (strings such as "1h" from a config read as durations),
    checked: known event names, positive durations."""
    checked = {}
    for event, window in windows.items():
        if event not in KNOWN_EVENTS:
            raise ValueError(
                f"attribution window for unknown event {event!r}: use one of {KNOWN_EVENTS}"
            )
        try:
            duration = pd.Timedelta(window)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"attribution window of {event!r} is {window!r}, not a duration: "
                "give a pd.Timedelta (e.g. pd.Timedelta(days=1))"
            ) from error
        if pd.isna(duration) or duration <= pd.Timedelta(0):
            raise ValueError(
                f"attribution window of {event!r} is {window!r}: give a positive duration, "
                "or leave the event out to not attribute it"
            )
        checked[event] = duration
    return checked


def attribute_outcomes(
    exposures: pd.DataFrame,
    interactions: pd.DataFrame,
    windows: Mapping[str, pd.Timedelta],
) -> pd.DataFrame:
    """The interactions whose event has a window, each joined to the latest exposure of the
    same (user, item) served at most its window before it (unit_id is the user id);
    interactions with no such exposure are left out. Columns: ATTRIBUTED_COLUMNS, in
    the interactions' time order.

    One `merge_asof` over integer (user, item) keys: the latest exposure at or before each
    interaction is found once, then kept only if it lies within that event's window (an
    older exposure of the same pair would lie further out still)."""
    checked = validate_windows(windows)
    _require(exposures, ("unit_id", "item_id", *EXPOSURE_CONTEXT_COLUMNS), "exposures")
    _require(interactions, INTERACTION_COLUMNS, "interactions")
    outcomes = interactions.loc[
        interactions["event"].isin(list(checked)) & interactions["ts"].notna(),
        list(INTERACTION_COLUMNS),
    ]
    shown = exposures.loc[
        exposures["served_at"].notna(), ["unit_id", "item_id", *EXPOSURE_CONTEXT_COLUMNS]
    ]
    if outcomes.empty or shown.empty:
        return _empty(interactions, exposures)

    left_key, right_key = _pair_keys(
        outcomes["user_id"], outcomes["item_id"], shown["unit_id"], shown["item_id"]
    )
    left = outcomes.assign(**{_KEY: left_key, _AT: _as_utc(outcomes["ts"], "interactions.ts")})
    right = shown.drop(columns=["unit_id", "item_id"]).assign(
        **{_KEY: right_key, _AT: _as_utc(shown["served_at"], "exposures.served_at")}
    )
    # Ties at one instant resolve to the last row: the later request, the lower slot.
    right = right.sort_values([_AT, "request_id", "position"], kind="stable")
    left = left.sort_values(_AT, kind="stable")
    merged = pd.merge_asof(
        left,
        right,
        on=_AT,
        by=_KEY,
        direction="backward",
        tolerance=max(checked.values()),
        allow_exact_matches=True,
    )
    window = merged["event"].map(checked)
    within = merged["request_id"].notna() & (merged[_AT] - merged["served_at"] <= window)
    attributed = merged.loc[within, list(ATTRIBUTED_COLUMNS)].reset_index(drop=True)
    # Unmatched rows made the exposure's columns nullable (position float): restore them.
    return attributed.astype({name: shown[name].dtype for name in EXPOSURE_CONTEXT_COLUMNS})


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} lack column(s) {missing}: give the canonical interactions "
            "(components.data.schema) and the exposure log's rows (read_exposures)"
        )


def _pair_keys(
    users: pd.Series, items: pd.Series, units: pd.Series, shown_items: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """One int64 per (user, item) pair, coded jointly over both tables, so `merge_asof`
    groups by a single integer instead of two string columns."""
    user_codes, _ = pd.factorize(pd.concat([users, units], ignore_index=True).astype(str))
    item_codes, item_ids = pd.factorize(
        pd.concat([items, shown_items], ignore_index=True).astype(str)
    )
    keys = user_codes.astype(np.int64) * max(len(item_ids), 1) + item_codes
    return keys[: len(users)], keys[len(users) :]


def _as_utc(values: pd.Series, name: str) -> pd.Series:
    if not isinstance(values.dtype, pd.DatetimeTZDtype):
        raise ValueError(
            f"{name} has dtype {values.dtype}, not timezone-aware timestamps: convert it "
            "with pd.to_datetime(values, utc=True)"
        )
    return values.dt.tz_convert("UTC").astype(TIMESTAMP_DTYPE)


def _empty(interactions: pd.DataFrame, exposures: pd.DataFrame) -> pd.DataFrame:
    """No attributed rows, with the columns and dtypes a non-empty answer has."""
    return pd.concat(
        [
            interactions[list(INTERACTION_COLUMNS)].iloc[:0].reset_index(drop=True),
            exposures[list(EXPOSURE_CONTEXT_COLUMNS)].iloc[:0].reset_index(drop=True),
        ],
        axis=1,
    )
