"""The interactions-file reader: small CSV, TSV and Parquet files written to tmp_path, with
items and users files, column mappings and every timestamp format."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.config import ColumnMapping, InteractionsFileSourceConfig
from components.data.readers.interactions_file import load_interactions_file
from components.data.readers.parsing import SourceError
from tests.components.data.source_files import (
    EPOCH_S,
    INSTANTS,
    TS_FORMATS,
    assert_canonical,
    interactions_config,
    small_events,
    write_csv,
)


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


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_ids_are_the_strings_written_whatever_the_format(tmp_path: Path, suffix: str) -> None:
    """`NA`, `null`, `None`, `nan`, `N/A` are real ids (they became nulls and were
    quarantined), `2.0` and `2` two users in CSV and Parquet alike; only an empty field is
    missing, and a numeric column keeps its usual missing markers."""
    ids = ["NA", "null", "None", "nan", "N/A", "2.0", "2"]
    frame = pd.DataFrame(
        {
            "user_id": ids,
            "item_id": [f"i{n}" for n in range(len(ids))],
            "ts": [EPOCH_S[0]] * len(ids),
            "weight": ["1.5", "NA", "", "2", "null", "1", "1"],
        }
    )
    path = tmp_path / f"events{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.assign(weight=pd.to_numeric(frame["weight"], errors="coerce")).to_parquet(path)
    mapping = {"user_id": "user_id", "item_id": "item_id", "ts": "ts", "weight": "weight"}
    tables = load_interactions_file(interactions_config(path, columns=mapping))
    assert list(tables.interactions["user_id"]) == ids
    assert sorted(tables.users["user_id"]) == sorted(ids)
    weights = tables.interactions["weight"].tolist()
    assert weights[0] == 1.5 and pd.isna(weights[1]) and pd.isna(weights[2])


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
