"""Validation of the canonical tables: bad rows are quarantined, too many bad rows fail the run.

Every failure names the table, the column, the rule and a few offending rows, so the user
knows what to fix. A run that fails here fails before any training: the registry is untouched.
Timestamps must lie between `validation.min_timestamp` and the ingestion time plus
`validation.future_tolerance`: a date in the future or near epoch 0 is an export bug, and
trained on it would move the test window onto junk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from components.config import ValidationConfig
from components.data.schema import (
    INTERACTIONS,
    ITEMS,
    KNOWN_EVENTS,
    SPLIT_COLUMN,
    TIMESTAMP_DTYPE,
    USERS,
    CanonicalTables,
)
from components.ids import MAX_ID_CHARS

REQUIRED_COLUMNS = {
    INTERACTIONS: ("user_id", "item_id", "ts", "event", "weight"),
    ITEMS: ("item_id",),
    USERS: ("user_id",),
}


class DataValidationError(ValueError):
    """The input data cannot be used; the message names table, column, rule and rows."""


@dataclass(frozen=True)
class Violation:
    table: str
    column: str
    rule: str
    rows: int
    examples: list[dict[str, object]]

    def describe(self) -> str:
        shown = "; ".join(str(example) for example in self.examples)
        return f"{self.table}.{self.column}: {self.rule} — {self.rows} row(s), e.g. {shown}"


@dataclass(frozen=True)
class ValidationResult:
    """Clean tables, the quarantined rows per table (with the reasons) and the counts."""

    tables: CanonicalTables
    quarantine: dict[str, pd.DataFrame]
    violations: list[Violation] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Interaction rows equal to an earlier one, and what `duplicate_events` did with them.
    duplicates: dict[str, object] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        return {
            "counts": self.counts,
            "exact_duplicate_events": self.duplicates,
            "violations": [
                {"table": v.table, "column": v.column, "rule": v.rule, "rows": v.rows}
                for v in self.violations
            ],
        }


def validate_tables(
    tables: CanonicalTables, config: ValidationConfig, now: pd.Timestamp | None = None
) -> ValidationResult:
    """Check schema and cross-table rules and set bad rows apart (see `enforce_bad_share`).

    `now` is the ingestion time (default: the current time; validation runs right after
    ingest). Missing required columns, an empty interactions table or a wrong column dtype
    fail at once: no row could be trusted."""
    _require_columns(tables)
    if tables.interactions.empty:
        raise DataValidationError(
            "table interactions is empty: the source gave no rows; check the input files"
        )
    allow_missing_ts = tables.has_fixed_split
    violations: list[Violation] = []
    bad_rows: dict[str, dict[int, list[str]]] = {name: {} for name in REQUIRED_COLUMNS}

    time_rules = _timestamp_rules(config, pd.Timestamp.now(tz="UTC") if now is None else now)
    for name, schema in _schemas(allow_missing_ts).items():
        frame = tables.table(name)
        found = _out_of_range(name, frame, time_rules, config)
        # Rows already set apart for their dates skip the schema: a time past year 9999
        # (epoch milliseconds read as seconds) breaks pandera's report of failing values.
        misdated = frame.index[:0]
        for _, index in found:
            misdated = misdated.union(index)
        found += _run_schema(name, schema, frame.drop(index=misdated), config)
        for violation, index in found:
            violations.append(violation)
            _mark(bad_rows[name], index, f"{violation.column}: {violation.rule}")

    items = tables.items
    bad_items = set(bad_rows[ITEMS])
    clean_item_ids = set(items.loc[~items.index.isin(bad_items), "item_id"].dropna())
    clean_user_ids = set(
        tables.users.loc[~tables.users.index.isin(set(bad_rows[USERS])), "user_id"].dropna()
    )
    interactions = tables.interactions
    for column, known, table in (
        ("item_id", clean_item_ids, ITEMS),
        ("user_id", clean_user_ids, USERS),
    ):
        orphan = interactions[column].notna() & ~interactions[column].isin(known)
        if orphan.any():
            rule = f"must reference a valid row of {table}.{column}"
            index = interactions.index[orphan]
            violations.append(_violation(INTERACTIONS, column, rule, interactions, index, config))
            _mark(bad_rows[INTERACTIONS], index, f"{column}: {rule}")

    duplicates = _exact_duplicates(interactions, set(bad_rows[INTERACTIONS]))
    if len(duplicates) and config.duplicate_events == "quarantine":
        _mark(bad_rows[INTERACTIONS], duplicates, DUPLICATE_RULE)
    dropped = duplicates if config.duplicate_events == "drop" else duplicates[:0]

    quarantine: dict[str, pd.DataFrame] = {}
    clean: dict[str, pd.DataFrame] = {}
    counts: dict[str, dict[str, int]] = {}
    for name in REQUIRED_COLUMNS:
        frame = tables.table(name)
        bad_index = pd.Index(sorted(bad_rows[name]), dtype="int64")
        quarantined = frame.loc[bad_index].copy()
        quarantined["_reasons"] = [" | ".join(bad_rows[name][i]) for i in bad_index]
        quarantine[name] = quarantined
        removed = bad_index.union(dropped) if name == INTERACTIONS else bad_index
        clean[name] = frame.drop(index=removed).reset_index(drop=True)
        counts[name] = {"rows": len(frame), "quarantined": len(bad_index)}

    return ValidationResult(
        tables=tables.replace(**clean),
        quarantine=quarantine,
        violations=violations,
        counts=counts,
        duplicates={"rule": config.duplicate_events, "rows": len(duplicates)},
    )


#: Why a copy of an earlier interaction row is quarantined (`duplicate_events: quarantine`).
DUPLICATE_RULE = "exact duplicate of an earlier row"


def _exact_duplicates(interactions: pd.DataFrame, bad: set[int]) -> pd.Index:
    """Rows equal in every column to an earlier valid row (the first copy is not one)."""
    valid = interactions.drop(index=pd.Index(sorted(bad), dtype="int64"))
    return valid.index[valid.duplicated(keep="first")]


def enforce_bad_share(result: ValidationResult, config: ValidationConfig) -> None:
    """Fail when any table's quarantined share is above the configured threshold, or when
    no interaction is left. Called after the quarantine file is written, so nothing is lost."""
    for name, count in result.counts.items():
        share = count["quarantined"] / count["rows"] if count["rows"] else 0.0
        if share > config.max_bad_share:
            details = "\n  ".join(v.describe() for v in result.violations if v.table == name)
            raise DataValidationError(
                f"table {name}: {count['quarantined']} of {count['rows']} rows ({share:.1%}) "
                f"break the rules, above validation.max_bad_share={config.max_bad_share:.1%}. "
                f"Fix the source data or the column mapping, or raise the threshold.\n  {details}"
            )
    if result.tables.interactions.empty:
        raise DataValidationError("table interactions has no valid row left after quarantine")


def _require_columns(tables: CanonicalTables) -> None:
    for name, required in REQUIRED_COLUMNS.items():
        frame = tables.table(name)
        missing = [column for column in required if column not in frame.columns]
        if missing:
            raise DataValidationError(
                f"table {name} is missing required column(s) {missing}; columns present: "
                f"{list(frame.columns)}. Map them in the config's source column mapping."
            )


#: Times Python's datetime can hold; pandas' microsecond timestamps reach far beyond them.
_REPRESENTABLE = (pd.Timestamp("0001-01-01", tz="UTC"), pd.Timestamp("9999-12-31", tz="UTC"))
_TIMESTAMP_COLUMNS = {
    INTERACTIONS: ("ts",),
    ITEMS: ("created_at", "sold_at"),
    USERS: ("created_at",),
}


@dataclass(frozen=True)
class _TimeRule:
    """Timestamps on the wrong side of `bound` (after it when `after`) break `rule`."""

    rule: str
    bound: pd.Timestamp
    after: bool

    def breaks(self, values: pd.Series) -> pd.Series:
        return (values > self.bound) if self.after else (values < self.bound)


def _timestamp_rules(config: ValidationConfig, now: pd.Timestamp) -> tuple[_TimeRule, _TimeRule]:
    """The plausible range of every timestamp: not after the ingestion time `now` plus
    `future_tolerance` ("future timestamp"), not before `min_timestamp` ("before floor").
    With a bound switched off, times Python cannot represent are still set apart."""
    first, last = _REPRESENTABLE
    if config.future_tolerance is None:
        latest = _TimeRule("future timestamp: after the year 9999 (a wrong epoch unit)", last, True)
    else:
        ingested = _utc(now)
        latest = _TimeRule(
            f"future timestamp: after the ingestion time {ingested:%Y-%m-%d %H:%M} UTC + "
            f"validation.future_tolerance={config.future_tolerance} (a wrong clock, time "
            "zone or epoch unit in the source)",
            min(ingested + pd.Timedelta(config.future_tolerance), last),
            True,
        )
    if config.min_timestamp is None:
        earliest = _TimeRule("before floor: before the year 1 (a wrong epoch unit)", first, False)
    else:
        earliest = _TimeRule(
            f"before floor: before validation.min_timestamp={config.min_timestamp} (epoch 0, "
            "a placeholder date or a wrong epoch unit in the source)",
            max(_utc(pd.Timestamp(config.min_timestamp)), first),
            False,
        )
    return latest, earliest


def _out_of_range(
    name: str, frame: pd.DataFrame, rules: tuple[_TimeRule, ...], config: ValidationConfig
) -> list[tuple[Violation, pd.Index]]:
    found = []
    for column in _TIMESTAMP_COLUMNS[name]:
        if column not in frame or not isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            continue  # absent or unparsed: the schema names it
        for rule in rules:
            index = frame.index[rule.breaks(frame[column]).fillna(False).to_numpy(bool)]
            if len(index):
                found.append((_violation(name, column, rule.rule, frame, index, config), index))
    return found


def _utc(moment: pd.Timestamp) -> pd.Timestamp:
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


#: The served model's id limit, checked here so that training never accepts an id that
#: serving refuses.
ID_LENGTH_RULE = f"must have at most {MAX_ID_CHARS} characters (the served model's id limit)"


def _id_length() -> pa.Check:
    return pa.Check(lambda ids: ids.str.len() <= MAX_ID_CHARS, error=ID_LENGTH_RULE)


def _schemas(allow_missing_ts: bool) -> dict[str, pa.DataFrameSchema]:
    timestamp = pa.Column(TIMESTAMP_DTYPE, nullable=True, coerce=False)
    return {
        INTERACTIONS: pa.DataFrameSchema(
            {
                "user_id": pa.Column("string", _id_length(), nullable=False),
                "item_id": pa.Column("string", _id_length(), nullable=False),
                "ts": pa.Column(TIMESTAMP_DTYPE, nullable=allow_missing_ts),
                "event": pa.Column("string", pa.Check.isin(KNOWN_EVENTS), nullable=False),
                "weight": pa.Column(
                    "float64",
                    pa.Check(np.isfinite, element_wise=True, error="finite"),
                    nullable=False,
                ),
                SPLIT_COLUMN: pa.Column(
                    "string", pa.Check.isin(("train", "valid", "test")), required=False
                ),
            },
        ),
        ITEMS: pa.DataFrameSchema(
            {
                "item_id": pa.Column(
                    "string", _id_length(), nullable=False, unique=True, report_duplicates="all"
                ),
                "price": pa.Column("float64", pa.Check.ge(0), nullable=True),
                "created_at": timestamp,
                "sold_at": timestamp,
            },
            checks=[
                pa.Check(
                    lambda df: (
                        df["sold_at"].isna()
                        | df["created_at"].isna()
                        | (df["sold_at"] >= df["created_at"])
                    ),
                    error="sold_at must not be before created_at",
                )
            ],
        ),
        USERS: pa.DataFrameSchema(
            {
                "user_id": pa.Column(
                    "string", _id_length(), nullable=False, unique=True, report_duplicates="all"
                ),
                "created_at": timestamp,
            }
        ),
    }


def _run_schema(
    name: str, schema: pa.DataFrameSchema, frame: pd.DataFrame, config: ValidationConfig
) -> list[tuple[Violation, pd.Index]]:
    try:
        schema.validate(frame, lazy=True)
    except SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return []
    found: list[tuple[Violation, pd.Index]] = []
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
        column_name = "(row)" if pd.isna(column) else str(column)
        rule = _describe_check(str(check))
        rows = group["index"].dropna()
        if rows.empty:
            # A whole-column failure such as a wrong dtype: no single row to quarantine.
            raise DataValidationError(
                f"table {name}, column {column_name}: {rule} "
                f"(found {group['failure_case'].iloc[0]!r}). Fix the adapter or column mapping."
            )
        index = pd.Index(rows.astype("int64").unique())
        found.append((_violation(name, column_name, rule, frame, index, config), index))
    return found


def _describe_check(check: str) -> str:
    if check == "not_nullable":
        return "must not be null (missing or unparseable value)"
    if check == "field_uniqueness":
        return "must be unique (duplicate ids)"
    if check.startswith("isin"):
        return f"must be one of the known values {check[len('isin') :]}"
    if check.startswith("greater_than_or_equal_to"):
        return f"must be >= {check[len('greater_than_or_equal_to') :].strip('()')}"
    return check


def _violation(
    table: str,
    column: str,
    rule: str,
    frame: pd.DataFrame,
    index: pd.Index,
    config: ValidationConfig,
) -> Violation:
    sample = frame.loc[index[: config.examples_in_error]]
    examples = [
        {"row": int(i), **{k: _plain(v) for k, v in row.items()}}
        for i, row in zip(sample.index, sample.to_dict("records"), strict=True)
    ]
    return Violation(table=table, column=column, rule=rule, rows=len(index), examples=examples)


def _plain(value: object) -> object:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:40]}... ({len(value):,} characters)"
    if isinstance(value, int | float | str):
        return value
    try:
        return str(value)
    except NotImplementedError:
        if isinstance(value, pd.Timestamp):  # past the year 9999: numpy can print it
            return str(np.datetime_as_string(value.asm8, unit="s"))
        raise


def _mark(bad: dict[int, list[str]], index: pd.Index, reason: str) -> None:
    for row in index:
        bad.setdefault(int(row), []).append(reason)
