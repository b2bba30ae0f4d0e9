"""Exposure rows to Arrow and back: the checked conversion every sink writes through, and
the sorted frame of the schema's dtypes every read returns."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa

from components.experiments.schema import (
    EXPOSURE_COLUMNS,
    EXPOSURE_SCHEMA,
    REQUIRED_EXPOSURE_COLUMNS,
    empty_exposures,
    exposure_frame,
)

#: The order `read` returns rows in (and each Parquet file is written in).
SORT_KEYS = [("served_at", "ascending"), ("request_id", "ascending"), ("position", "ascending")]


def exposure_table(rows: pd.DataFrame) -> pa.Table:
    """`rows` as an Arrow table of EXPOSURE_SCHEMA (extra columns ignored, optional ones
    that are absent written as nulls), checked column by column so that a bad batch is
    refused with the column's name before anything is written."""
    missing = [name for name in REQUIRED_EXPOSURE_COLUMNS if name not in rows.columns]
    if missing:
        raise ValueError(
            f"exposure rows lack column(s) {missing}: give every required column of "
            "EXPOSURE_COLUMNS (components.experiments.schema)"
        )
    arrays = []
    for field in EXPOSURE_SCHEMA:
        if field.name not in rows.columns:
            arrays.append(pa.nulls(len(rows), type=field.type))
            continue
        values = rows[field.name]
        if pa.types.is_timestamp(field.type):
            if not isinstance(values.dtype, pd.DatetimeTZDtype):
                raise ValueError(
                    f"exposure column {field.name!r} has dtype {values.dtype}, not "
                    "timezone-aware timestamps: convert it with pd.to_datetime(values, utc=True)"
                )
            values = values.dt.tz_convert("UTC").dt.floor("us")
        try:
            array = pa.array(values, type=field.type, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as error:
            raise ValueError(
                f"exposure column {field.name!r} (dtype {values.dtype}) does not convert to "
                f"{field.type}: {error}; cast it first (e.g. rows[{field.name!r}]"
                f".astype({_pandas_type(field.type)!r}))"
            ) from error
        if not field.nullable and array.null_count:
            raise ValueError(
                f"exposure column {field.name!r} holds {array.null_count} null value(s) but "
                "may not be null: fill them or drop those rows before logging"
            )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=EXPOSURE_SCHEMA)


def _pandas_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type):
        return "str"
    if pa.types.is_integer(arrow_type):
        return str(arrow_type)
    return "float64"


def utc_bound(name: str, value: pd.Timestamp | None) -> pd.Timestamp | None:
    """A read bound in UTC; a naive one is refused rather than guessed."""
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        raise ValueError(
            f"{name}={value!r} has no timezone: pass a UTC timestamp, "
            f"e.g. pd.Timestamp({str(stamp)!r}, tz='UTC')"
        )
    return stamp.tz_convert("UTC")


def sorted_exposures(table: pa.Table) -> pd.DataFrame:
    """The schema's columns with its dtypes, in read order."""
    if table.num_rows == 0:
        return empty_exposures()
    table = table.select(list(EXPOSURE_COLUMNS)).cast(EXPOSURE_SCHEMA).sort_by(SORT_KEYS)
    return exposure_frame(table)
