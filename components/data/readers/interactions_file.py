"""The generic interactions-file reader: a CSV/TSV (optionally gzipped) or Parquet file of
events, plus optional items and users files, mapped onto the canonical columns by
`source.columns`, `item_columns` and `user_columns`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import ColumnMapping, InteractionsFileSourceConfig
from components.data.readers.parsing import (
    SourceError,
    check_not_empty,
    existing_file,
    parse_timestamps,
    tidy,
)
from components.data.schema import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    ITEM_TEXT_COLUMNS,
    USER_COLUMNS,
    CanonicalTables,
    canonicalise,
)

_CSV_SEPARATORS = {".csv": ",", ".csv.gz": ",", ".tsv": "\t", ".tsv.gz": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")


def load_interactions_file(config: InteractionsFileSourceConfig) -> CanonicalTables:
    """A CSV or Parquet interactions file, plus optional items and users files.

    `source.columns` maps the interactions columns; `item_columns` / `user_columns` map the
    other files (canonical -> source). A canonical column not mapped but present under its
    canonical name is taken; every other source column is kept as an extra column (except
    one that would clash with a canonical name mapped from elsewhere). Without an items or
    users file, those tables list the distinct ids with all attributes null.
    """
    interactions_path = existing_file(config.interactions, "interactions file")
    interactions = _read_interactions(interactions_path, config.columns)
    items, items_path = _read_items(config, interactions)
    users, users_path = _read_users(config, interactions)
    source: dict[str, object] = {
        "kind": "interactions_file",
        "interactions": str(interactions_path),
        "items": items_path,
        "users": users_path,
    }
    return canonicalise(CanonicalTables(interactions, items, users, source=source))


def _read_interactions(path: Path, mapping: ColumnMapping) -> pd.DataFrame:
    """Read and map the interactions file: ids, timestamps, and the event and weight
    (the configured default event and 1.0 where the file has none)."""
    wanted = {
        "user_id": mapping.user_id,
        "item_id": mapping.item_id,
        "ts": mapping.ts,
        "event": mapping.event,
        "weight": mapping.weight,
    }
    raw = _read_table(
        path,
        "interactions file",
        text_columns=[wanted[c] or c for c in ("user_id", "item_id", "ts", "event")],
        literal_columns=[wanted[c] or c for c in ("user_id", "item_id", "event")],
    )
    interactions = _apply_mapping(
        raw,
        wanted,
        canonical=INTERACTION_COLUMNS,
        required=("user_id", "item_id", "ts"),
        path=path,
        role="interactions file",
        config_key="source.columns",
    )
    interactions["ts"] = parse_timestamps(
        interactions["ts"],
        mapping.ts_unit,
        path=path,
        column=wanted["ts"] or "ts",
        required=True,
        unit_key="source.columns.ts_unit",
    )
    if "event" not in interactions:
        interactions["event"] = mapping.default_event
    if "weight" not in interactions:
        interactions["weight"] = 1.0
    for column in ("user_id", "item_id"):
        interactions[column] = _integral_floats_as_int(interactions[column])
    return tidy(interactions, INTERACTION_COLUMNS)


def _read_items(
    config: InteractionsFileSourceConfig, interactions: pd.DataFrame
) -> tuple[pd.DataFrame, str | None]:
    """The items table and the path it was read from; without an items file, the distinct
    item ids of the interactions (and no path)."""
    if config.items is None:
        _refuse_mapping_without_file(config.item_columns, "item_columns", "items")
        return _ids_table(interactions["item_id"], "item_id"), None
    items_path = existing_file(config.items, "items file", config_key="source.items")
    items = _read_side_table(
        items_path,
        "items file",
        config.item_columns,
        canonical=ITEM_COLUMNS,
        text=("item_id", *ITEM_TEXT_COLUMNS),
        timestamps=("created_at", "sold_at"),
        config_key="source.item_columns",
    )
    return items, str(items_path)


def _read_users(
    config: InteractionsFileSourceConfig, interactions: pd.DataFrame
) -> tuple[pd.DataFrame, str | None]:
    """The users table and the path it was read from; without a users file, the distinct
    user ids of the interactions (and no path)."""
    if config.users is None:
        _refuse_mapping_without_file(config.user_columns, "user_columns", "users")
        return _ids_table(interactions["user_id"], "user_id"), None
    users_path = existing_file(config.users, "users file", config_key="source.users")
    users = _read_side_table(
        users_path,
        "users file",
        config.user_columns,
        canonical=USER_COLUMNS,
        text=("user_id", "country"),
        timestamps=("created_at",),
        config_key="source.user_columns",
    )
    return users, str(users_path)


def _read_side_table(
    path: Path,
    role: str,
    mapping: Mapping[str, str],
    *,
    canonical: tuple[str, ...],
    text: tuple[str, ...],
    timestamps: tuple[str, ...],
    config_key: str,
) -> pd.DataFrame:
    """Read and map an items or users file; its id column is required."""
    unknown = sorted(set(mapping) - set(canonical))
    if unknown:
        raise SourceError(
            f"`{config_key}` maps {', '.join(map(repr, unknown))}, which "
            f"{'is not a canonical column' if len(unknown) == 1 else 'are not canonical columns'}"
            f" of the {role.removesuffix(' file')} table (canonical: {', '.join(canonical)}). "
            f"Fix the `{config_key}` mapping in your config (keys are canonical names, values "
            "are your file's column names)"
        )
    wanted: dict[str, str | None] = {c: mapping.get(c) for c in canonical}
    raw = _read_table(
        path,
        role,
        text_columns=[wanted[c] or c for c in (*text, *timestamps)],
        literal_columns=[wanted[c] or c for c in text],
    )
    id_column = canonical[0]
    frame = _apply_mapping(
        raw,
        wanted,
        canonical=canonical,
        required=(id_column,),
        path=path,
        role=role,
        config_key=config_key,
    )
    for column in timestamps:
        if column in frame:
            frame[column] = parse_timestamps(
                frame[column], "auto", path=path, column=wanted[column] or column
            )
    for column in text:
        if column in frame:
            frame[column] = _integral_floats_as_int(frame[column])
    return tidy(frame, canonical)


def _refuse_mapping_without_file(mapping: Mapping[str, str], key: str, table: str) -> None:
    """A mapping with no file to apply it to is a config mistake, not something to ignore."""
    if mapping:
        raise SourceError(
            f"`source.{key}` is set but `source.{table}` is not: there is no {table} file to "
            f"map. Set `source.{table}` to the file, or remove `source.{key}`"
        )


def _apply_mapping(
    raw: pd.DataFrame,
    wanted: Mapping[str, str | None],
    *,
    canonical: tuple[str, ...],
    required: tuple[str, ...],
    path: Path,
    role: str,
    config_key: str,
) -> pd.DataFrame:
    """Rename mapped source columns to canonical names; keep the rest as extra columns."""
    present = [str(c) for c in raw.columns]
    chosen: dict[str, str] = {}
    for name in canonical:
        source_name = wanted.get(name)
        if source_name is not None and source_name not in raw.columns:
            raise SourceError(
                f"{role} {path} has no column {source_name!r} (mapped to {name}); columns "
                f"present: {', '.join(present)}.{_separator_hint(present)} Fix the "
                f"`{config_key}` mapping in your config"
            )
        if source_name is None and name in raw.columns:
            source_name = name
        if source_name is not None:
            chosen[name] = source_name
    missing = [name for name in required if name not in chosen]
    if missing:
        raise SourceError(
            f"{role} {path} has no column for {', '.join(missing)}; columns present: "
            f"{', '.join(present)}.{_separator_hint(present)} Map "
            f"{'it' if len(missing) == 1 else 'them'} in `{config_key}` in your config"
        )
    frame = pd.DataFrame({name: raw[source_name] for name, source_name in chosen.items()})
    used = set(chosen.values())
    for column in raw.columns:
        if column not in used and column not in canonical:
            frame[column] = raw[column]
    return frame


def _separator_hint(columns: list[str]) -> str:
    """One column whose name holds a separator usually means the wrong file extension."""
    if len(columns) == 1:
        for separator, name in ((";", "semicolons"), ("\t", "tabs"), (",", "commas"), ("|", "|")):
            if separator in columns[0]:
                return (
                    f" The file seems to be separated by {name}: .csv files must use commas "
                    "and .tsv files tabs."
                )
    return ""


def _read_table(
    path: Path, role: str, *, text_columns: list[str], literal_columns: list[str]
) -> pd.DataFrame:
    """Read CSV/TSV (optionally gzipped) or Parquet by extension; text columns stay strings,
    and ids and free text (`literal_columns`) are what the file says: `NA` is an id."""
    name = path.name.lower()
    check_not_empty(path, role)
    separator = next((sep for ext, sep in _CSV_SEPARATORS.items() if name.endswith(ext)), None)
    if separator is None and not name.endswith(_PARQUET_SUFFIXES):
        raise SourceError(
            f"{role} {path} has an unsupported extension; use one of "
            f"{', '.join((*_CSV_SEPARATORS, *_PARQUET_SUFFIXES))} (rename or convert it)"
        )
    try:
        if separator is not None:
            frame = _read_delimited(path, separator, text_columns, literal_columns)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError as error:
        raise SourceError(
            f"{role} {path} is empty (no header, no rows); export the data again"
        ) from error
    except UnicodeDecodeError as error:
        raise SourceError(
            f"{role} {path} is not UTF-8 text ({error}); re-save it as UTF-8 CSV or as Parquet"
        ) from error
    except (ValueError, OSError) as error:
        kind = "CSV/TSV" if separator is not None else "Parquet"
        raise SourceError(
            f"{role} {path} cannot be read as {kind}: {error}. Check that the file is a "
            "complete, valid file of the type its extension says"
        ) from error
    if frame.empty:
        raise SourceError(
            f"{role} {path} has no rows (columns: {', '.join(map(str, frame.columns))}); "
            "export the data again or point the config at the right file"
        )
    return frame


#: What marks a missing value in a numeric CSV column (pandas' defaults). A text column's
#: only missing value is an empty field: `NA`, `null`, `None`, `nan` and `N/A` are real
#: ids and titles there.
NUMERIC_MISSING = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip


def _read_delimited(
    path: Path, separator: str, text_columns: list[str], literal_columns: list[str]
) -> pd.DataFrame:
    """A CSV/TSV with `text_columns` read as strings, `literal_columns` among them exactly
    as written (only an empty field is missing)."""
    header = pd.read_csv(path, sep=separator, nrows=0).columns
    missing = {column: list(NUMERIC_MISSING) for column in header}
    missing.update({column: [""] for column in literal_columns if column in missing})
    return pd.read_csv(
        path,
        sep=separator,
        dtype=dict.fromkeys(text_columns, str),
        keep_default_na=False,
        na_values=missing,
    )


def _integral_floats_as_int(values: pd.Series) -> pd.Series:
    """Ids read as floats (a Parquet int column with nulls) would otherwise print as '12.0'."""
    if pd.api.types.is_float_dtype(values.dtype):
        finite = values.dropna()
        if (finite == np.floor(finite)).all():
            return values.astype("Int64")
    return values


def _ids_table(ids: pd.Series, id_column: str) -> pd.DataFrame:
    """The distinct ids of a table no file describes: every attribute stays null."""
    unique = pd.Series(ids.dropna().unique()).astype("string").sort_values()
    return pd.DataFrame({id_column: unique.to_numpy()})
