"""Shared by the source readers: `SourceError`, the checks that a configured file or folder
exists and is not empty, timestamp parsing (epoch units or ISO-8601) and canonical column
order.

Every reader raises `SourceError` for what the user must fix before anything can be read (a
missing file or column, an unreadable format, timestamps that never parse), naming the file,
the problem and the fix. Row-level problems (a null id, one unparseable timestamp) are left in
place for validation, which quarantines and names the offending rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.data.schema import TIMESTAMP_DTYPE


class SourceError(ValueError):
    """The input data cannot be read as configured; the message names the file and the fix."""


def parse_timestamps(
    values: pd.Series,
    unit: str,
    *,
    path: Path,
    column: str,
    required: bool = False,
    unit_key: str | None = None,
) -> pd.Series:
    """Epoch s/ms or ISO-8601 to UTC; unparseable values become NaT for validation to name.

    "auto" reads numbers as epoch time, choosing seconds, milliseconds, microseconds or
    nanoseconds by magnitude, and anything else as ISO-8601 (naive times are taken as UTC).
    Raises when values exist but none parse (a mapping mistake), and in "auto" when the
    numbers mix epoch units (see `_epoch_unit`); `unit_key` is the config key that sets the
    unit explicitly, if there is one.
    """
    present = values.notna()
    if not present.any():
        if required:
            raise SourceError(
                f"column {column!r} of {path} is empty in every row; map `ts` to the column "
                "that holds the event times"
            )
        return pd.Series(pd.NaT, index=values.index, dtype=TIMESTAMP_DTYPE)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        parsed = values.dt.tz_localize("UTC")
    else:
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            values = values.astype("string").str.strip()
        numeric = pd.to_numeric(values, errors="coerce")
        if unit == "auto":
            numeric_share = numeric.notna().sum() / present.sum()
            unit = _epoch_unit(numeric, path, column, unit_key) if numeric_share >= 0.5 else "iso"
        if unit == "iso":
            parsed = pd.to_datetime(
                values.astype("string"), utc=True, errors="coerce", format="ISO8601"
            )
        else:
            parsed = pd.to_datetime(numeric, unit=unit, utc=True, errors="coerce")
    parsed = parsed.astype(TIMESTAMP_DTYPE)
    if parsed.isna().all():
        examples = ", ".join(repr(str(v)) for v in values[present].head(3))
        raise SourceError(
            f"no value in column {column!r} of {path} parses as a timestamp (e.g. {examples}); "
            "set `source.columns.ts_unit` to s, ms or iso to match them, or map `ts` to the "
            "column that holds the event times"
        )
    return parsed


#: Epoch units by magnitude: times from 1973 to 5138 are 1e8-1e11 s, 1e11-1e14 ms, and so on.
_EPOCH_UNITS = (
    ("s", "seconds", 1e8, 1e11),
    ("ms", "milliseconds", 1e11, 1e14),
    ("us", "microseconds", 1e14, 1e17),
    ("ns", "nanoseconds", 1e17, np.inf),
)


def _epoch_unit(numeric: pd.Series, path: Path, column: str, unit_key: str | None) -> str:
    """Guess the epoch unit: present-day times are ~1e9 s, ~1e12 ms, ~1e15 us, ~1e18 ns.

    A column whose numbers fall in two of these ranges mixes units (two systems writing one
    export): it is refused, naming the share in each unit, rather than read per row by
    guesswork. Numbers below 1e8 fit no unit; they are read in the column's unit and
    validation quarantines them as before its floor.
    """
    magnitude = numeric.abs()
    median = float(magnitude.median())
    found = []
    for unit, name, lower, upper in _EPOCH_UNITS:
        in_unit = numeric[(magnitude >= lower) & (magnitude < upper)]
        if len(in_unit):
            found.append((unit, name, len(in_unit), in_unit.iloc[0]))
    if len(found) > 1:
        total = sum(count for _, _, count, _ in found)
        shares = ", ".join(
            f"{count} ({count / total:.1%}) in {name} (e.g. {example:.0f})"
            for _, name, count, example in found
        )
        majority, majority_name = max(found, key=lambda each: each[2])[:2]
        explicit = ""
        if unit_key is not None and majority in ("s", "ms"):
            explicit = (
                f", or set `{unit_key}` to {majority} to read every value as {majority_name} "
                "(validation then quarantines the others as out-of-range timestamps)"
            )
        raise SourceError(
            f"column {column!r} of {path} mixes epoch units: {shares}. A per-row guess could "
            "misdate events silently, so nothing is read: export the column in one unit or "
            f"as ISO-8601 dates{explicit}"
        )
    for unit, _, lower, upper in _EPOCH_UNITS:
        if lower <= median < upper:
            return unit
    raise SourceError(
        f"column {column!r} of {path} holds numbers (median {median:g}) too small to be "
        "epoch seconds or milliseconds after 1973; set `source.columns.ts_unit` to s or ms "
        "if they really are, or convert the column to ISO-8601 dates"
    )


def tidy(frame: pd.DataFrame, canonical: tuple[str, ...]) -> pd.DataFrame:
    """Canonical columns first; extra text columns get the same null-aware string dtype."""
    extras = [c for c in frame.columns if c not in canonical]
    frame = frame[[c for c in canonical if c in frame] + extras].copy()
    for column in extras:
        if pd.api.types.is_string_dtype(frame[column].dtype):
            frame[column] = frame[column].astype("string")
    return frame


def existing_file(path: Path, role: str, config_key: str = "source.interactions") -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise SourceError(
            f"{role} {path} does not exist (looked for {resolved}); fix `{config_key}` in "
            "your config (relative paths are resolved against the config file's folder)"
        )
    if not resolved.is_file():
        raise SourceError(f"{role} {path} is a folder, not a file; point `{config_key}` at a file")
    return resolved


def existing_folder(path: Path, role: str, config_key: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        problem = "is a file, not a folder" if resolved.exists() else "does not exist"
        raise SourceError(
            f"{role} {path} {problem} (looked for {resolved}); fix `{config_key}` in your "
            "config (relative paths are resolved against the config file's folder)"
        )
    return resolved


def check_not_empty(path: Path, role: str, config_key: str | None = None) -> None:
    if path.stat().st_size == 0:
        where = f"`{config_key}` in your config" if config_key else "your config"
        raise SourceError(f"{role} {path} is empty (0 bytes); export the data again or fix {where}")
