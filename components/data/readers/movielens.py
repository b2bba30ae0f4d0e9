"""The MovieLens 100K reader: the unpacked ml-100k folder (u.data, u.item, u.user and
optionally u.genre) as canonical tables."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import MovieLens100kSourceConfig
from components.data.readers.parsing import SourceError, check_not_empty, existing_folder, tidy
from components.data.schema import (
    ITEM_COLUMNS,
    RATING_EVENT,
    TIMESTAMP_DTYPE,
    USER_COLUMNS,
    CanonicalTables,
    canonicalise,
)

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
    folder = existing_folder(config.path, "MovieLens-100K folder", "source.path")
    paths = _ml100k_paths(folder)
    genres = _ml100k_genres(folder)
    interactions = _ml100k_ratings(paths["u.data"])
    items = _ml100k_items(paths["u.item"], genres)
    users = _ml100k_users(paths["u.user"])
    source = {"kind": "movielens_100k", "path": str(folder)}
    return canonicalise(CanonicalTables(interactions, items, users, source=source))


def _ml100k_paths(folder: Path) -> dict[str, Path]:
    """u.data, u.item and u.user of the folder, each checked to exist and hold data."""
    paths = {name: folder / name for name in ("u.data", "u.item", "u.user")}
    for name, path in paths.items():
        if not path.is_file():
            raise SourceError(
                f"MovieLens-100K folder {folder} has no {name}; point `source.path` at the "
                "unpacked ml-100k folder (it holds u.data, u.item, u.user)"
            )
        check_not_empty(path, f"MovieLens-100K file {name}", "source.path")
    return paths


def _ml100k_ratings(path: Path) -> pd.DataFrame:
    """u.data as interactions: `rating` events weighted by the star rating."""
    ratings = _read_ml100k(
        path,
        sep="\t",
        names=["user_id", "item_id", "rating", "ts"],
        layout="tab-separated user id, item id, rating, unix timestamp",
    )
    try:
        weight = pd.to_numeric(ratings["rating"]).astype("float64")
        ts = pd.to_datetime(pd.to_numeric(ratings["ts"]), unit="s", utc=True)
    except (ValueError, TypeError) as error:
        raise SourceError(
            f"MovieLens-100K file {path} has a non-numeric rating or timestamp "
            f"({error}); use the unmodified u.data from GroupLens"
        ) from error
    return pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "ts": ts.astype(TIMESTAMP_DTYPE),
            "event": RATING_EVENT,
            "weight": weight,
        }
    )


def _ml100k_items(path: Path, genres: tuple[str, ...]) -> pd.DataFrame:
    """u.item as items: the primary genre as `category`, all genres in `genres`, and the
    release year."""
    item_names = ["item_id", "title", "release_date", "video_date", "url", *genres]
    raw_items = _read_ml100k(
        path,
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
    return tidy(items, ITEM_COLUMNS)


def _ml100k_users(path: Path) -> pd.DataFrame:
    """u.user as users: age, gender, occupation and zip kept as extra columns."""
    raw_users = _read_ml100k(
        path,
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
    return tidy(users, USER_COLUMNS)


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
