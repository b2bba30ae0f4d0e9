"""Source adapters: read real data and map it onto the canonical tables.

Each loader checks only what the user must fix before anything can be read (a missing file
or column, an unreadable format, timestamps that never parse) and raises `SourceError` naming
the file, the problem and the fix. Row-level problems (a null id, one unparseable timestamp)
are left in place for validation, which quarantines and names the offending rows.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from components.config import (
    FixedSplitSourceConfig,
    InteractionsFileSourceConfig,
    MovieLens100kSourceConfig,
    SourceConfig,
)
from components.data.schema import (
    INTERACTION_COLUMNS,
    INTERACTION_EVENT,
    ITEM_COLUMNS,
    ITEM_TEXT_COLUMNS,
    RATING_EVENT,
    SPLIT_COLUMN,
    TIMESTAMP_DTYPE,
    USER_COLUMNS,
    CanonicalTables,
    canonicalise,
)

__all__ = [
    "SourceError",
    "load_fixed_split",
    "load_interactions_file",
    "load_movielens_100k",
    "load_source",
]


class SourceError(ValueError):
    """The input data cannot be read as configured; the message names the file and the fix."""


def load_source(config: SourceConfig) -> CanonicalTables:
    """Load the configured source into canonical tables (one entry point for every flow)."""
    kind = getattr(config, "kind", None)
    if kind == "synthetic":
        # Imported here so that real-data runs never pay for (or depend on) the generator.
        from components.data.synthetic import generate_marketplace

        return generate_marketplace(config).tables
    if isinstance(config, MovieLens100kSourceConfig):
        return load_movielens_100k(config)
    if isinstance(config, InteractionsFileSourceConfig):
        return load_interactions_file(config)
    if isinstance(config, FixedSplitSourceConfig):
        return load_fixed_split(config)
    raise SourceError(
        f"unknown source kind {kind!r}; set `source.kind` to one of: synthetic, "
        "movielens_100k, interactions_file, fixed_split"
    )


# --------------------------------------------------------------------------- MovieLens 100K

#: The 19 genres of u.genre, in flag order; used only if u.genre is absent.
_ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def load_movielens_100k(config: MovieLens100kSourceConfig) -> CanonicalTables:
    """MovieLens 100K: ratings become `rating` events weighted by the star rating.

    Items: `category` is the movie's first flagged genre in u.genre order ("unknown" only if
    it is the sole flag; null with no flag), since MovieLens does not rank a movie's genres;
    all genres are kept "|"-joined in `genres`, and `year` comes from the release date.
    Movies never sell, so `created_at` / `sold_at` are null. Users keep age, gender,
    occupation and zip as extra columns; they are protected or personal attributes and are
    not ranking features.
    """
    folder = _existing_folder(config.path, "MovieLens-100K folder", "source.path")
    paths = {name: folder / name for name in ("u.data", "u.item", "u.user")}
    for name, path in paths.items():
        if not path.is_file():
            raise SourceError(
                f"MovieLens-100K folder {folder} has no {name}; point `source.path` at the "
                "unpacked ml-100k folder (it holds u.data, u.item, u.user)"
            )
        _check_not_empty(path, f"MovieLens-100K file {name}", "source.path")

    genres = _ml100k_genres(folder)
    ratings = _read_ml100k(
        paths["u.data"],
        sep="\t",
        names=["user_id", "item_id", "rating", "ts"],
        layout="tab-separated user id, item id, rating, unix timestamp",
    )
    try:
        weight = pd.to_numeric(ratings["rating"]).astype("float64")
        ts = pd.to_datetime(pd.to_numeric(ratings["ts"]), unit="s", utc=True)
    except (ValueError, TypeError) as error:
        raise SourceError(
            f"MovieLens-100K file {paths['u.data']} has a non-numeric rating or timestamp "
            f"({error}); use the unmodified u.data from GroupLens"
        ) from error
    interactions = pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "ts": ts.astype(TIMESTAMP_DTYPE),
            "event": RATING_EVENT,
            "weight": weight,
        }
    )

    item_names = ["item_id", "title", "release_date", "video_date", "url", *genres]
    raw_items = _read_ml100k(
        paths["u.item"],
        sep="|",
        names=item_names,
        layout=f"pipe-separated id, title, release date, video date, URL, {len(genres)} "
        "genre flags",
        encoding="latin-1",
    )
    flags = raw_items[list(genres)].apply(pd.to_numeric, errors="coerce").fillna(0)
    flags = flags.to_numpy(dtype=bool)
    genre_names = np.asarray(genres, dtype=object)
    # Prefer a real genre over "unknown": mask it out where any other flag is set.
    primary_flags = flags.copy()
    if genres[0] == "unknown":
        primary_flags[:, 0] &= ~flags[:, 1:].any(axis=1)
    has_genre = flags.any(axis=1)
    category = np.where(has_genre, genre_names[primary_flags.argmax(axis=1)], None)
    joined = ["|".join(genre_names[row]) if row.any() else None for row in flags]
    release = pd.to_datetime(raw_items["release_date"], format="%d-%b-%Y", errors="coerce")
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            "category": category,
            "title": raw_items["title"],
            "genres": joined,
            "year": release.dt.year.astype("Int64"),
        }
    )
    items = _tidy(items, ITEM_COLUMNS)

    raw_users = _read_ml100k(
        paths["u.user"],
        sep="|",
        names=["user_id", "age", "gender", "occupation", "zip"],
        layout="pipe-separated id, age, gender, occupation, zip code",
    )
    users = pd.DataFrame(
        {
            "user_id": raw_users["user_id"],
            "age": pd.to_numeric(raw_users["age"], errors="coerce").astype("Int64"),
            "gender": raw_users["gender"],
            "occupation": raw_users["occupation"],
            "zip": raw_users["zip"],
        }
    )
    users = _tidy(users, USER_COLUMNS)
    source = {"kind": "movielens_100k", "path": str(folder)}
    return canonicalise(CanonicalTables(interactions, items, users, source=source))


def _ml100k_genres(folder: Path) -> tuple[str, ...]:
    """Genre names in flag order, from u.genre (`name|index` lines) when present."""
    path = folder / "u.genre"
    if not path.is_file():
        return _ML100K_GENRES
    pairs = []
    for line in path.read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        name, _, index = line.rpartition("|")
        if not name or not index.strip().isdigit():
            raise SourceError(
                f"MovieLens-100K file {path} has a line {line!r} that is not `name|index`; "
                "use the unmodified u.genre from GroupLens (or delete it to use the standard "
                "19 genres)"
            )
        pairs.append((int(index), name))
    return tuple(name for _, name in sorted(pairs))


def _read_ml100k(
    path: Path, *, sep: str, names: list[str], layout: str, encoding: str = "utf-8"
) -> pd.DataFrame:
    """Read one headerless MovieLens file as text columns, checking its column count."""
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=None,
            dtype=str,
            encoding=encoding,
            quoting=csv.QUOTE_NONE,
            keep_default_na=False,
            na_values=[""],
        )
    except (ValueError, OSError) as error:
        raise SourceError(
            f"MovieLens-100K file {path} cannot be read as {layout}: {error}; use the "
            "unmodified file from GroupLens"
        ) from error
    if frame.shape[1] != len(names):
        raise SourceError(
            f"MovieLens-100K file {path} has {frame.shape[1]} columns, expected {len(names)} "
            f"({layout}); use the unmodified file from GroupLens"
        )
    frame.columns = names
    return frame


# ------------------------------------------------------------------ generic interactions file

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
    mapping = config.columns
    interactions_path = _existing_file(config.interactions, "interactions file")
    wanted = {
        "user_id": mapping.user_id,
        "item_id": mapping.item_id,
        "ts": mapping.ts,
        "event": mapping.event,
        "weight": mapping.weight,
    }
    raw = _read_table(
        interactions_path,
        "interactions file",
        text_columns=[wanted[c] or c for c in ("user_id", "item_id", "ts", "event")],
    )
    interactions = _apply_mapping(
        raw,
        wanted,
        canonical=INTERACTION_COLUMNS,
        required=("user_id", "item_id", "ts"),
        path=interactions_path,
        role="interactions file",
        config_key="source.columns",
    )
    interactions["ts"] = _parse_timestamps(
        interactions["ts"],
        mapping.ts_unit,
        path=interactions_path,
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
    interactions = _tidy(interactions, INTERACTION_COLUMNS)

    source: dict[str, object] = {
        "kind": "interactions_file",
        "interactions": str(interactions_path),
        "items": None,
        "users": None,
    }
    if config.items is not None:
        items_path = _existing_file(config.items, "items file", config_key="source.items")
        source["items"] = str(items_path)
        items = _read_side_table(
            items_path,
            "items file",
            config.item_columns,
            canonical=ITEM_COLUMNS,
            text=("item_id", *ITEM_TEXT_COLUMNS),
            timestamps=("created_at", "sold_at"),
            config_key="source.item_columns",
        )
    else:
        _refuse_mapping_without_file(config.item_columns, "item_columns", "items")
        items = _ids_table(interactions["item_id"], "item_id")
    if config.users is not None:
        users_path = _existing_file(config.users, "users file", config_key="source.users")
        source["users"] = str(users_path)
        users = _read_side_table(
            users_path,
            "users file",
            config.user_columns,
            canonical=USER_COLUMNS,
            text=("user_id", "country"),
            timestamps=("created_at",),
            config_key="source.user_columns",
        )
    else:
        _refuse_mapping_without_file(config.user_columns, "user_columns", "users")
        users = _ids_table(interactions["user_id"], "user_id")
    return canonicalise(CanonicalTables(interactions, items, users, source=source))


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
    raw = _read_table(path, role, text_columns=[wanted[c] or c for c in (*text, *timestamps)])
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
            frame[column] = _parse_timestamps(
                frame[column], "auto", path=path, column=wanted[column] or column
            )
    for column in text:
        if column in frame:
            frame[column] = _integral_floats_as_int(frame[column])
    return _tidy(frame, canonical)


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


def _read_table(path: Path, role: str, *, text_columns: list[str]) -> pd.DataFrame:
    """Read CSV/TSV (optionally gzipped) or Parquet by extension; text columns stay strings."""
    name = path.name.lower()
    _check_not_empty(path, role)
    separator = next((sep for ext, sep in _CSV_SEPARATORS.items() if name.endswith(ext)), None)
    if separator is None and not name.endswith(_PARQUET_SUFFIXES):
        raise SourceError(
            f"{role} {path} has an unsupported extension; use one of "
            f"{', '.join((*_CSV_SEPARATORS, *_PARQUET_SUFFIXES))} (rename or convert it)"
        )
    try:
        if separator is not None:
            frame = pd.read_csv(path, sep=separator, dtype=dict.fromkeys(text_columns, str))
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


# ------------------------------------------------------------------------- fixed splits

#: Anything but ASCII digits and blanks makes a fixed-split line malformed.
_SPLIT_BAD_BYTE = re.compile(rb"[^0-9 \t\r\n]")


def load_fixed_split(config: FixedSplitSourceConfig) -> CanonicalTables:
    """A published benchmark split: one `user_id item_id item_id ...` line per user and file.

    Interactions are untimed implicit feedback (`interaction`, weight 1.0, ts NaT) with the
    split name in the `split` column. The validation file is optional: with `valid_file` left
    at its default it is read only if it exists; a name set explicitly must exist.
    """
    folder = _existing_folder(config.path, "fixed-split folder", "source.path")
    files: dict[str, str | None] = {
        "train": config.train_file,
        "valid": config.valid_file,
        "test": config.test_file,
    }
    valid = files["valid"]
    if (
        valid is not None
        and not (folder / valid).exists()
        and "valid_file" not in config.model_fields_set
    ):
        files["valid"] = None
    parts_users: list[np.ndarray] = []
    parts_items: list[np.ndarray] = []
    split_codes: list[np.ndarray] = []
    all_users: list[np.ndarray] = []
    split_names = [name for name, file in files.items() if file is not None]
    for code, split in enumerate(split_names):
        key = f"source.{split}_file"
        path = folder / files[split]
        if not path.is_file():
            raise SourceError(
                f"fixed-split folder {folder} has no {split} file {files[split]!r}; set "
                f"`{key}` to the file's name (files present: "
                f"{', '.join(sorted(p.name for p in folder.iterdir())) or 'none'})"
            )
        line_users, item_users, items = _read_split_file(path, role=f"{split} file", key=key)
        parts_users.append(item_users)
        parts_items.append(items)
        split_codes.append(np.full(len(items), code, dtype=np.int8))
        all_users.append(line_users)

    user_ids = np.concatenate(parts_users)
    item_ids = np.concatenate(parts_items)
    codes = np.concatenate(split_codes)
    interactions = pd.DataFrame(
        {
            "user_id": _int_ids_as_str(user_ids),
            "item_id": _int_ids_as_str(item_ids),
            "ts": pd.Series(pd.NaT, index=range(len(item_ids)), dtype=TIMESTAMP_DTYPE),
            "event": _repeated_str([INTERACTION_EVENT], np.zeros(len(codes), dtype=np.int8)),
            "weight": np.ones(len(item_ids)),
            SPLIT_COLUMN: _repeated_str(split_names, codes),
        }
    )
    items = pd.DataFrame({"item_id": _int_ids_as_str(np.unique(item_ids))})
    users = pd.DataFrame({"user_id": _int_ids_as_str(np.unique(np.concatenate(all_users)))})
    source = {"kind": "fixed_split", "path": str(folder), "files": files}
    return canonicalise(CanonicalTables(interactions, items, users, source=source))


def _read_split_file(path: Path, *, role: str, key: str) -> tuple[np.ndarray, ...]:
    """Parse `user_id item_id ...` lines, vectorised (ml-1m's ~1M ids in well under 1 s).

    Returns every user id that starts a line, and the (user, item) pair of each interaction.
    """
    _check_not_empty(path, role, config_key=key)
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    bad = _SPLIT_BAD_BYTE.search(raw)
    if bad is not None:
        number = raw.count(b"\n", 0, bad.start()) + 1
        line = raw.split(b"\n")[number - 1].decode("utf-8", errors="replace")
        token = next(
            (t for t in line.split() if not (t.isascii() and t.isdigit())),
            bad.group().decode("latin-1"),
        )
        raise SourceError(
            f"{role} {path} line {number}: {token!r} is not a non-negative integer id; each "
            "line must be `user_id item_id item_id ...` (0-based integer ids separated by "
            "spaces). Fix or remove the line"
        )
    data = np.frombuffer(raw, dtype=np.uint8)
    digit = (data >= ord("0")) & (data <= ord("9"))
    edges = np.diff(digit.astype(np.int8), prepend=0, append=0)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if len(starts) == 0:
        raise SourceError(f"{role} {path} has no ids; expected `user_id item_id ...` lines")
    too_long = np.flatnonzero(ends - starts > 18)
    if len(too_long):
        offset = int(starts[too_long[0]])
        number = raw.count(b"\n", 0, offset) + 1
        token = raw[offset : int(ends[too_long[0]])].decode()
        raise SourceError(
            f"{role} {path} line {number}: id {token!r} is too large for an integer id; "
            "re-encode the ids as 0-based integers"
        )
    values = np.fromstring(raw, dtype=np.int64, sep=" ")  # only digits and blanks remain
    line_of_token = np.searchsorted(np.flatnonzero(data == ord("\n")), starts)
    first = np.ones(len(starts), dtype=bool)
    first[1:] = line_of_token[1:] != line_of_token[:-1]
    line_users = values[first]
    item_users = line_users[np.cumsum(first)[~first] - 1]
    items = values[~first]
    if len(items) == 0:
        raise SourceError(
            f"{role} {path} lists users but no items; expected `user_id item_id ...` lines"
        )
    return line_users, item_users, items


def _repeated_str(names: list[str], codes: np.ndarray) -> pd.Series:
    """A string column of a few distinct values, built by Arrow without Python objects."""
    column = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(names))
    return pd.Series(pd.arrays.ArrowStringArray(column.cast(pa.string())))


def _int_ids_as_str(values: np.ndarray) -> pd.Series:
    """Integer ids as canonical strings; Arrow's cast is ~20x faster than numpy's astype."""
    return pd.Series(pd.arrays.ArrowStringArray(pa.array(values).cast(pa.string())))


# ------------------------------------------------------------------------------ helpers


def _parse_timestamps(
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


def _tidy(frame: pd.DataFrame, canonical: tuple[str, ...]) -> pd.DataFrame:
    """Canonical columns first; extra text columns get the same null-aware string dtype."""
    extras = [c for c in frame.columns if c not in canonical]
    frame = frame[[c for c in canonical if c in frame] + extras].copy()
    for column in extras:
        if pd.api.types.is_string_dtype(frame[column].dtype):
            frame[column] = frame[column].astype("string")
    return frame


def _existing_file(path: Path, role: str, config_key: str = "source.interactions") -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise SourceError(
            f"{role} {path} does not exist (looked for {resolved}); fix `{config_key}` in "
            "your config (relative paths are resolved against the config file's folder)"
        )
    if not resolved.is_file():
        raise SourceError(f"{role} {path} is a folder, not a file; point `{config_key}` at a file")
    return resolved


def _existing_folder(path: Path, role: str, config_key: str) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        problem = "is a file, not a folder" if resolved.exists() else "does not exist"
        raise SourceError(
            f"{role} {path} {problem} (looked for {resolved}); fix `{config_key}` in your "
            "config (relative paths are resolved against the config file's folder)"
        )
    return resolved


def _check_not_empty(path: Path, role: str, config_key: str | None = None) -> None:
    if path.stat().st_size == 0:
        where = f"`{config_key}` in your config" if config_key else "your config"
        raise SourceError(f"{role} {path} is empty (0 bytes); export the data again or fix {where}")
