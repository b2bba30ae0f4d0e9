"""Source adapters: small real files written to tmp_path, plus the shared public datasets."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import (
    ColumnMapping,
    FixedSplitSourceConfig,
    InteractionsFileSourceConfig,
    MovieLens100kSourceConfig,
    PipelineConfig,
    SyntheticSourceConfig,
)
from components.data.adapters import (
    SourceError,
    load_fixed_split,
    load_interactions_file,
    load_movielens_100k,
    load_source,
)
from components.data.schema import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    SPLIT_COLUMN,
    TIMESTAMP_DTYPE,
    USER_COLUMNS,
    CanonicalTables,
)

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
ML_100K = SHARED_DATA / "ml-100k"
ML_1M_LCFN = SHARED_DATA / "ml-1m-lcfn"

#: The same three instants written as epoch seconds, epoch milliseconds and ISO-8601.
INSTANTS = pd.to_datetime(
    ["2024-03-01T08:00:00Z", "2024-03-01T09:30:15Z", "2024-03-02T23:59:59Z"], utc=True
)
EPOCH_S = [int(t.timestamp()) for t in INSTANTS]
TS_FORMATS = {
    "s": EPOCH_S,
    "ms": [s * 1000 for s in EPOCH_S],
    "iso": ["2024-03-01T08:00:00Z", "2024-03-01 11:30:15+02:00", "2024-03-02T23:59:59"],
}


def assert_canonical(tables: CanonicalTables) -> None:
    assert tuple(tables.interactions.columns[:5]) == INTERACTION_COLUMNS
    assert tuple(tables.items.columns[: len(ITEM_COLUMNS)]) == ITEM_COLUMNS
    assert tuple(tables.users.columns[: len(USER_COLUMNS)]) == USER_COLUMNS
    assert str(tables.interactions["ts"].dtype) == TIMESTAMP_DTYPE
    assert tables.interactions["weight"].dtype == "float64"
    for frame, column in (
        (tables.interactions, "user_id"),
        (tables.interactions, "item_id"),
        (tables.items, "item_id"),
        (tables.users, "user_id"),
    ):
        assert frame[column].dtype == "string", column


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False)
    return path


def interactions_config(path: Path, **overrides: object) -> InteractionsFileSourceConfig:
    """Built the way a pipeline YAML would give it, to exercise the real config model."""
    raw = {
        "kind": "interactions_file",
        "interactions": str(path),
        "columns": {"user_id": "uid", "item_id": "iid", "ts": "time"},
        **overrides,
    }
    return InteractionsFileSourceConfig.model_validate(yaml.safe_load(yaml.safe_dump(raw)))


def small_events(ts: list[object]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "uid": ["u1", "u2", "u1"],
            "iid": ["007", "i2", "i3"],
            "time": ts,
            "action": ["view", "purchase", "like"],
            "device": ["ios", "web", "ios"],
        }
    )


# ----------------------------------------------------------------------------- MovieLens 100K


@pytest.fixture(scope="module")
def ml_100k() -> CanonicalTables:
    if not ML_100K.is_dir():
        pytest.skip(f"MovieLens-100K not found at {ML_100K}")
    return load_movielens_100k(MovieLens100kSourceConfig(path=ML_100K))


@pytest.mark.needs_shared_data
@pytest.mark.skipif(not ML_100K.is_dir(), reason=f"MovieLens-100K not found at {ML_100K}")
def test_movielens_100k_real_folder(ml_100k: CanonicalTables) -> None:
    tables = ml_100k
    assert_canonical(tables)
    interactions = tables.interactions
    assert len(interactions) == 100_000
    assert interactions["user_id"].nunique() == 943
    assert interactions["item_id"].nunique() == 1_682
    assert len(tables.users) == 943 and len(tables.items) == 1_682
    assert set(interactions["event"].unique()) == {"rating"}
    assert set(interactions["weight"].unique()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert interactions["ts"].min() >= pd.Timestamp("1997-09-01", tz="UTC")
    assert interactions["ts"].max() < pd.Timestamp("1998-05-01", tz="UTC")
    assert interactions["ts"].notna().all()

    toy_story = tables.items.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == "Animation|Children's|Comedy"
    assert toy_story["category"] == "Animation"
    assert toy_story["year"] == 1995
    assert tables.items["category"].notna().all()
    assert tables.items["year"].isna().sum() == 1  # item 267 has no release date
    assert tables.items[["created_at", "sold_at", "price", "seller_id"]].isna().all().all()

    users = tables.users.set_index("user_id")
    assert list(users.loc["1", ["age", "gender", "occupation", "zip"]]) == [
        24,
        "M",
        "technician",
        "85711",
    ]
    assert users["created_at"].isna().all() and users["country"].isna().all()
    assert tables.source == {"kind": "movielens_100k", "path": str(ML_100K.resolve())}


def write_ml_100k(folder: Path, *, with_genre_file: bool = True) -> Path:
    """A three-movie MovieLens-100K folder in the real formats (Latin-1, pipes, tabs)."""
    folder.mkdir()
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy"]
    genres += [f"G{i}" for i in range(13)]
    if with_genre_file:
        (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)))
    flags = {
        "1": [0, 0, 0, 1, 1, 1],  # Animation first among its genres
        "2": [1, 0, 1],  # "unknown" loses to a real genre
        "3": [0],  # no genre at all
    }
    lines = []
    for item_id, head in flags.items():
        row = [*head, *[0] * (19 - len(head))]
        title = {"1": "Toy Story (1995)", "2": "Amélie (2001)", "3": "Untitled"}[item_id]
        date = {"1": "01-Jan-1995", "2": "25-Apr-2001", "3": ""}[item_id]
        lines.append("|".join([item_id, title, date, "", "http://x", *map(str, row)]))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|T8H1N\n")
    (folder / "u.data").write_text("1\t1\t5\t881250949\n2\t2\t3\t891717742\n1\t3\t1\t878887116\n")
    return folder


@pytest.mark.parametrize("with_genre_file", [True, False])
def test_movielens_100k_small_folder_genres_and_category(
    tmp_path: Path, with_genre_file: bool
) -> None:
    folder = write_ml_100k(tmp_path / "ml", with_genre_file=with_genre_file)
    tables = load_movielens_100k(MovieLens100kSourceConfig(path=folder))
    assert_canonical(tables)
    items = tables.items.set_index("item_id")
    assert items.loc["1", "category"] == "Animation"
    assert items.loc["2", "category"] == "Adventure"
    assert items.loc["2", "genres"] == "unknown|Adventure"
    assert items.loc["2", "title"] == "Amélie (2001)"  # Latin-1 decoded
    assert items.loc["2", "year"] == 2001
    assert pd.isna(items.loc["3", "category"]) and pd.isna(items.loc["3", "genres"])
    assert pd.isna(items.loc["3", "year"])
    assert tables.users.set_index("user_id").loc["2", "zip"] == "T8H1N"
    first = tables.interactions.iloc[0]
    assert first["ts"] == pd.Timestamp(881250949, unit="s", tz="UTC")
    assert first["weight"] == 5.0


def test_movielens_100k_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"does not exist.*source\.path"):
        load_movielens_100k(MovieLens100kSourceConfig(path=tmp_path / "nowhere"))
    folder = write_ml_100k(tmp_path / "ml")
    (folder / "u.user").unlink()
    with pytest.raises(SourceError, match=r"has no u\.user"):
        load_movielens_100k(MovieLens100kSourceConfig(path=folder))


def test_movielens_100k_wrong_layout(tmp_path: Path) -> None:
    folder = write_ml_100k(tmp_path / "ml")
    (folder / "u.data").write_text("1,1,5,881250949\n")
    with pytest.raises(SourceError, match=r"u\.data has 1 columns, expected 4"):
        load_movielens_100k(MovieLens100kSourceConfig(path=folder))


# --------------------------------------------------------------------- generic interactions file


@pytest.mark.parametrize("unit", ["s", "ms", "iso"])
@pytest.mark.parametrize("declared", ["auto", "explicit"])
def test_csv_timestamps_all_formats_give_the_same_utc_times(
    tmp_path: Path, unit: str, declared: str
) -> None:
    path = write_csv(tmp_path / "events.csv", small_events(TS_FORMATS[unit]))
    columns = {"user_id": "uid", "item_id": "iid", "ts": "time", "event": "action"}
    columns["ts_unit"] = unit if declared == "explicit" else "auto"
    tables = load_interactions_file(interactions_config(path, columns=columns))
    assert_canonical(tables)
    assert list(tables.interactions["ts"]) == list(INSTANTS)
    assert list(tables.interactions["event"]) == ["view", "purchase", "like"]


def test_csv_mapping_defaults_extras_and_derived_tables(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "events.csv", small_events(EPOCH_S))
    tables = load_interactions_file(
        interactions_config(path, columns={"user_id": "uid", "item_id": "iid", "ts": "time"})
    )
    interactions = tables.interactions
    # No event/weight mapped or present: the configured default event and weight 1.0.
    assert list(interactions["event"]) == ["interaction"] * 3
    assert list(interactions["weight"]) == [1.0] * 3
    # Unmapped source columns are kept as they are.
    assert list(interactions["action"]) == ["view", "purchase", "like"]
    assert list(interactions["device"]) == ["ios", "web", "ios"]
    assert interactions.loc[0, "item_id"] == "007"  # ids are read as text, zeros kept
    assert sorted(tables.items["item_id"]) == ["007", "i2", "i3"]
    assert sorted(tables.users["user_id"]) == ["u1", "u2"]
    assert tables.items.drop(columns="item_id").isna().all().all()
    assert tables.users.drop(columns="user_id").isna().all().all()
    assert tables.source == {
        "kind": "interactions_file",
        "interactions": str(path.resolve()),
        "items": None,
        "users": None,
    }


def test_canonical_names_are_taken_without_mapping(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [1, 2],
            "item_id": [10, 20],
            "ts": EPOCH_S[:2],
            "event": ["view", "like"],
            "weight": [2, 3],
        }
    )
    path = tmp_path / "events.tsv"
    frame.to_csv(path, sep="\t", index=False)
    config = InteractionsFileSourceConfig(
        interactions=path, columns=ColumnMapping(default_event="ignored")
    )
    tables = load_interactions_file(config)
    assert list(tables.interactions["user_id"]) == ["1", "2"]
    assert list(tables.interactions["event"]) == ["view", "like"]
    assert list(tables.interactions["weight"]) == [2.0, 3.0]


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_input(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(
        {
            "uid": pd.array([1, 2, 3], dtype="Int64"),
            "iid": [10.0, None, 30.0],  # a nullable int column stored as float
            "time": INSTANTS.tz_localize(None),  # naive timestamps are taken as UTC
            "score": [0.5, 1.0, 2.0],
        }
    )
    path = tmp_path / f"events{suffix}"
    frame.to_parquet(path)
    tables = load_interactions_file(
        interactions_config(
            path, columns={"user_id": "uid", "item_id": "iid", "ts": "time", "weight": "score"}
        )
    )
    assert_canonical(tables)
    assert list(tables.interactions["item_id"].fillna("null")) == ["10", "null", "30"]
    assert list(tables.interactions["ts"]) == list(INSTANTS)
    assert list(tables.interactions["weight"]) == [0.5, 1.0, 2.0]
    assert sorted(tables.items["item_id"]) == ["10", "30"]


def test_parquet_epoch_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    small_events(TS_FORMATS["ms"]).to_parquet(path)
    tables = load_interactions_file(interactions_config(path))
    assert list(tables.interactions["ts"]) == list(INSTANTS)


def test_gzipped_csv(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    small_events(EPOCH_S).to_csv(path, index=False)
    tables = load_interactions_file(interactions_config(path))
    assert len(tables.interactions) == 3


def test_items_and_users_files_with_mapping(tmp_path: Path) -> None:
    events = write_csv(tmp_path / "events.csv", small_events(EPOCH_S))
    items = write_csv(
        tmp_path / "items.csv",
        pd.DataFrame(
            {
                "sku": ["007", "i2", "i3"],
                "shop": [5, 5, 6],
                "cat": ["dresses", "shoes", "bags"],
                "size": ["38", "42", None],  # canonical name, not mapped: taken as is
                "price_eur": ["19.5", "40", "oops"],
                "listed": ["2024-02-01T10:00:00Z", "2024-02-02T10:00:00Z", None],
                "sold": [None, "2024-03-01T10:00:00Z", None],
                "material": ["cotton", "leather", None],
            }
        ),
    )
    users = write_csv(
        tmp_path / "users.csv",
        pd.DataFrame(
            {
                "member": ["u1", "u2"],
                "signup": [1_700_000_000, 1_700_086_400],
                "country": ["FR", "DE"],
                "plan": ["free", "pro"],
            }
        ),
    )
    config = interactions_config(
        events,
        items=str(items),
        users=str(users),
        item_columns={
            "item_id": "sku",
            "seller_id": "shop",
            "category": "cat",
            "price": "price_eur",
            "created_at": "listed",
            "sold_at": "sold",
        },
        user_columns={"user_id": "member", "created_at": "signup"},
    )
    tables = load_interactions_file(config)
    assert_canonical(tables)
    item = tables.items.set_index("item_id")
    assert list(item["seller_id"]) == ["5", "5", "6"]
    assert list(item["category"]) == ["dresses", "shoes", "bags"]
    assert list(item["size"].fillna("-")) == ["38", "42", "-"]
    assert item.loc["007", "price"] == 19.5 and pd.isna(item.loc["i3", "price"])
    assert item.loc["007", "created_at"] == pd.Timestamp("2024-02-01T10:00:00Z")
    assert pd.isna(item.loc["007", "sold_at"])
    assert item.loc["i2", "sold_at"] == pd.Timestamp("2024-03-01T10:00:00Z")
    assert list(item["material"].fillna("-")) == ["cotton", "leather", "-"]
    user = tables.users.set_index("user_id")
    assert user.loc["u1", "created_at"] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
    assert list(user["country"]) == ["FR", "DE"]
    assert list(user["plan"]) == ["free", "pro"]
    assert tables.source["items"] == str(items.resolve())


def test_unparseable_timestamps_become_nat_only_for_bad_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "events.csv", small_events([EPOCH_S[0], "yesterday", EPOCH_S[2]]))
    ts = load_interactions_file(interactions_config(path)).interactions["ts"]
    assert ts.isna().tolist() == [False, True, False]
    assert ts[0] == INSTANTS[0] and ts[2] == INSTANTS[2]

    iso = write_csv(tmp_path / "iso.csv", small_events(["2024-03-01T08:00:00Z", "not a date", ""]))
    ts = load_interactions_file(interactions_config(iso)).interactions["ts"]
    assert ts.isna().tolist() == [False, True, True]


def test_all_timestamps_bad_raises(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "events.csv", small_events(["soon", "later", "never"]))
    with pytest.raises(SourceError) as error:
        load_interactions_file(interactions_config(path))
    message = str(error.value)
    assert "'time'" in message and "'soon'" in message and "ts_unit" in message

    small = write_csv(tmp_path / "small.csv", small_events([1, 2, 3]))
    with pytest.raises(SourceError, match=r"too small to be epoch.*ts_unit"):
        load_interactions_file(interactions_config(small))

    empty_ts = write_csv(tmp_path / "empty_ts.csv", small_events([None, None, None]))
    with pytest.raises(SourceError, match=r"'time'.*empty in every row"):
        load_interactions_file(interactions_config(empty_ts))


def mixed_unit_events(n: int, in_ms: int) -> pd.DataFrame:
    """`n` hourly events from 2026-01-01 in epoch seconds, the last `in_ms` in milliseconds."""
    seconds = [1_767_225_600 + i * 3600 for i in range(n)]
    return pd.DataFrame(
        {
            "uid": [f"u{i % 7}" for i in range(n)],
            "iid": [f"i{i % 13}" for i in range(n)],
            "time": seconds[: n - in_ms] + [t * 1000 for t in seconds[n - in_ms :]],
        }
    )


@pytest.mark.parametrize(
    ("in_ms", "shares"),
    [
        (3, "97 (97.0%) in seconds (e.g. 1767225600), 3 (3.0%) in milliseconds"),
        (50, "50 (50.0%) in seconds (e.g. 1767225600), 50 (50.0%) in milliseconds"),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_mixed_epoch_units_are_refused_naming_the_column_and_the_share_in_each(
    tmp_path: Path, in_ms: int, shares: str, suffix: str
) -> None:
    path = tmp_path / f"events{suffix}"
    events = mixed_unit_events(100, in_ms)
    if suffix == ".csv":
        events.to_csv(path, index=False)
    else:
        events.to_parquet(path)
    with pytest.raises(SourceError) as error:
        load_interactions_file(interactions_config(path))
    message = str(error.value)
    assert f"column 'time' of {path} mixes epoch units: {shares}" in message
    assert "set `source.columns.ts_unit` to s" in message


def test_mixed_epoch_units_read_as_declared_when_the_unit_is_set(tmp_path: Path) -> None:
    """An explicit unit is the user's word: the other values land far out of range, for
    validation to quarantine (see test_steps)."""
    path = write_csv(tmp_path / "events.csv", mixed_unit_events(100, 3))
    columns = {"user_id": "uid", "item_id": "iid", "ts": "time", "ts_unit": "s"}
    ts = load_interactions_file(interactions_config(path, columns=columns)).interactions["ts"]
    assert ts.iloc[0] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert (ts.iloc[-3:].dt.year > 50_000).all()


def test_mixed_epoch_units_in_a_side_table_are_refused(tmp_path: Path) -> None:
    events = write_csv(tmp_path / "events.csv", small_events(EPOCH_S))
    users = write_csv(
        tmp_path / "users.csv",
        pd.DataFrame({"user_id": ["u1", "u2"], "created_at": [1_700_000_000, 1_700_000_000_000]}),
    )
    with pytest.raises(SourceError) as error:
        load_interactions_file(interactions_config(events, users=str(users)))
    message = str(error.value)
    assert f"column 'created_at' of {users} mixes epoch units" in message
    assert "export the column in one unit or as ISO-8601 dates" in message
    assert "ts_unit" not in message  # no such setting for a users file


def test_epoch_zero_is_read_in_the_column_unit_not_refused_as_mixed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "events.csv", small_events([EPOCH_S[0], 0, EPOCH_S[2]]))
    ts = load_interactions_file(interactions_config(path)).interactions["ts"]
    assert ts[1] == pd.Timestamp("1970-01-01T00:00:00Z")  # validation's floor quarantines it


def test_missing_mapped_column_names_it_and_lists_present_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "events.csv", small_events(EPOCH_S))
    config = interactions_config(path, columns={"user_id": "user", "item_id": "iid", "ts": "time"})
    with pytest.raises(SourceError) as error:
        load_interactions_file(config)
    message = str(error.value)
    assert str(path.resolve()) in message
    assert "no column 'user' (mapped to user_id)" in message
    assert "columns present: uid, iid, time, action, device" in message
    assert "source.columns" in message

    config = interactions_config(
        path, columns={"user_id": "uid", "item_id": "iid", "ts": "time", "weight": "w"}
    )
    with pytest.raises(SourceError, match=r"no column 'w' \(mapped to weight\)"):
        load_interactions_file(config)


def test_wrong_separator_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    small_events(EPOCH_S).to_csv(path, sep=";", index=False)
    with pytest.raises(SourceError, match="separated by semicolons"):
        load_interactions_file(interactions_config(path))


def test_item_mapping_mistakes(tmp_path: Path) -> None:
    events = write_csv(tmp_path / "events.csv", small_events(EPOCH_S))
    items = write_csv(tmp_path / "items.csv", pd.DataFrame({"sku": ["007"], "color": ["red"]}))
    typo = interactions_config(events, items=str(items), item_columns={"color": "color"})
    with pytest.raises(SourceError, match=r"'color'.*not a canonical column.*item_columns"):
        load_interactions_file(typo)
    no_id = interactions_config(events, items=str(items), item_columns={"colour": "color"})
    with pytest.raises(SourceError, match=r"items file .* no column for item_id.*sku, color"):
        load_interactions_file(no_id)
    no_file = interactions_config(events, item_columns={"item_id": "sku"})
    with pytest.raises(SourceError, match=r"`source.items` is not"):
        load_interactions_file(no_file)


@pytest.mark.parametrize("content", ["", "uid,iid,time\n"], ids=["zero-bytes", "header-only"])
def test_empty_file_raises(tmp_path: Path, content: str) -> None:
    path = tmp_path / "events.csv"
    path.write_text(content)
    with pytest.raises(SourceError, match=r"events\.csv (is empty|has no rows)"):
        load_interactions_file(interactions_config(path))


def test_missing_file_and_bad_formats_raise(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.csv does not exist.*source\.interactions"):
        load_interactions_file(interactions_config(tmp_path / "nope.csv"))
    events = write_csv(tmp_path / "events.csv", small_events(EPOCH_S))
    with pytest.raises(SourceError, match=r"users file .*missing\.csv does not exist"):
        load_interactions_file(interactions_config(events, users=str(tmp_path / "missing.csv")))
    xlsx = tmp_path / "events.xlsx"
    xlsx.write_bytes(b"PK\x03\x04")
    with pytest.raises(SourceError, match="unsupported extension"):
        load_interactions_file(interactions_config(xlsx))
    broken = tmp_path / "events.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match="cannot be read as Parquet"):
        load_interactions_file(interactions_config(broken))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("uid,iid,time\nZoë,1,1700000000\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8"):
        load_interactions_file(interactions_config(latin))


# ------------------------------------------------------------------------------ fixed split


def write_fixed_split(folder: Path, *, valid: str | None = "3 4\n") -> Path:
    folder.mkdir()
    (folder / "train.txt").write_text("0 1 2 3\n1 2\n2\n\n3 0 0 4\n")
    if valid is not None:
        (folder / "valid.txt").write_text(valid)
    (folder / "test.txt").write_text("0 4\n1 5 6\n")
    return folder


def test_fixed_split_small_fixture(tmp_path: Path) -> None:
    folder = write_fixed_split(tmp_path / "split")
    tables = load_fixed_split(FixedSplitSourceConfig(path=folder))
    assert_canonical(tables)
    assert tables.has_fixed_split
    interactions = tables.interactions
    assert interactions[SPLIT_COLUMN].value_counts().to_dict() == {
        "train": 7,
        "valid": 1,
        "test": 3,
    }
    train = interactions[interactions[SPLIT_COLUMN] == "train"]
    assert list(zip(train["user_id"], train["item_id"], strict=True)) == [
        ("0", "1"),
        ("0", "2"),
        ("0", "3"),
        ("1", "2"),
        ("3", "0"),
        ("3", "0"),
        ("3", "4"),
    ]
    assert interactions["ts"].isna().all()
    assert set(interactions["event"]) == {"interaction"}
    assert set(interactions["weight"]) == {1.0}
    assert sorted(tables.users["user_id"], key=int) == ["0", "1", "2", "3"]  # "2" has no items
    assert sorted(tables.items["item_id"], key=int) == ["0", "1", "2", "3", "4", "5", "6"]
    assert tables.source["files"] == {
        "train": "train.txt",
        "valid": "valid.txt",
        "test": "test.txt",
    }


def test_fixed_split_valid_file_is_optional(tmp_path: Path) -> None:
    folder = write_fixed_split(tmp_path / "split", valid=None)
    tables = load_fixed_split(FixedSplitSourceConfig(path=folder))
    assert set(tables.interactions[SPLIT_COLUMN]) == {"train", "test"}
    assert tables.source["files"]["valid"] is None
    none = load_fixed_split(FixedSplitSourceConfig(path=folder, valid_file=None))
    assert len(none.interactions) == len(tables.interactions)
    with pytest.raises(SourceError, match=r"no valid file 'dev\.txt'.*source\.valid_file"):
        load_fixed_split(FixedSplitSourceConfig(path=folder, valid_file="dev.txt"))


def test_fixed_split_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    folder = write_fixed_split(tmp_path / "split")
    (folder / "test.txt").write_text("0 4\n1 5 6\n2 7 x8 9\n")
    with pytest.raises(SourceError) as error:
        load_fixed_split(FixedSplitSourceConfig(path=folder))
    message = str(error.value)
    assert "test.txt line 3" in message and "'x8'" in message
    (folder / "test.txt").write_text("0 4\n1 -5\n")
    with pytest.raises(SourceError, match=r"test\.txt line 2: '-5'"):
        load_fixed_split(FixedSplitSourceConfig(path=folder))
    (folder / "test.txt").write_text("0 4.0\n")
    with pytest.raises(SourceError, match=r"test\.txt line 1: '4\.0'"):
        load_fixed_split(FixedSplitSourceConfig(path=folder))


def test_fixed_split_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        load_fixed_split(FixedSplitSourceConfig(path=tmp_path / "nowhere"))
    folder = write_fixed_split(tmp_path / "split")
    (folder / "test.txt").write_text("")
    with pytest.raises(SourceError, match=r"test\.txt is empty"):
        load_fixed_split(FixedSplitSourceConfig(path=folder))
    (folder / "test.txt").unlink()
    with pytest.raises(SourceError, match=r"no test file 'test\.txt'.*files present"):
        load_fixed_split(FixedSplitSourceConfig(path=folder))


@pytest.mark.needs_shared_data
@pytest.mark.skipif(not ML_1M_LCFN.is_dir(), reason=f"ml-1m-lcfn not found at {ML_1M_LCFN}")
def test_fixed_split_real_ml_1m_lcfn_counts_and_speed() -> None:
    started = time.perf_counter()
    tables = load_fixed_split(FixedSplitSourceConfig(path=ML_1M_LCFN))
    elapsed = time.perf_counter() - started
    counts = tables.interactions[SPLIT_COLUMN].value_counts().to_dict()
    assert counts == {"train": 796_244, "valid": 99_455, "test": 99_455}
    assert len(tables.users) == 6_022 and len(tables.items) == 3_043
    assert tables.interactions["user_id"].nunique() == 6_022
    assert elapsed < 10, f"ml-1m-lcfn took {elapsed:.1f} s to load"


# -------------------------------------------------------------------------------- dispatch


def test_load_source_dispatches_on_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = write_csv(tmp_path / "events.csv", small_events(EPOCH_S))
    assert load_source(interactions_config(events)).source["kind"] == "interactions_file"
    split = write_fixed_split(tmp_path / "split")
    assert load_source(FixedSplitSourceConfig(path=split)).source["kind"] == "fixed_split"
    ml = write_ml_100k(tmp_path / "ml")
    assert load_source(MovieLens100kSourceConfig(path=ml)).source["kind"] == "movielens_100k"

    # Through the pipeline config's discriminated union, as a YAML file would give it.
    pipeline = PipelineConfig.model_validate(
        {"name": "t", "source": {"kind": "fixed_split", "path": str(split)}}
    )
    assert load_source(pipeline.source).has_fixed_split

    # The synthetic generator is someone else's module: stand in for it.
    expected = load_source(FixedSplitSourceConfig(path=split))
    seen: list[object] = []

    def generate_marketplace(config: SyntheticSourceConfig) -> types.SimpleNamespace:
        seen.append(config)
        return types.SimpleNamespace(tables=expected)

    fake = types.ModuleType("components.data.synthetic")
    fake.generate_marketplace = generate_marketplace
    monkeypatch.setitem(sys.modules, "components.data.synthetic", fake)
    synthetic = SyntheticSourceConfig(n_users=10)
    assert load_source(synthetic) is expected
    assert seen == [synthetic]

    with pytest.raises(SourceError, match="unknown source kind"):
        load_source(types.SimpleNamespace(kind="csv"))
