import numpy as np
import pandas as pd
import pytest

from components.config import MovieLens100kSourceConfig, SyntheticSourceConfig, ValidationConfig
from components.data.readers.movielens import load_movielens_100k
from components.data.schema import TIMESTAMP_DTYPE
from components.data.synthetic import generate_marketplace
from components.data.validation import (
    DataValidationError,
    enforce_bad_share,
    validate_tables,
)
from tests.conftest import ML100K, make_tables, needs_ml100k


def _events(n: int) -> list[tuple[str, str, str, str]]:
    return [
        (f"u{i % 7}", f"i{i % 13}", f"2026-01-{1 + i % 28:02d}T10:00:00Z", "view") for i in range(n)
    ]


def test_clean_tables_pass_untouched():
    tables = make_tables(_events(100))
    result = validate_tables(tables, ValidationConfig())
    enforce_bad_share(result, ValidationConfig())
    assert len(result.tables.interactions) == 100
    assert result.counts["interactions"] == {"rows": 100, "quarantined": 0}


def test_missing_required_column_names_table_and_column():
    tables = make_tables(_events(5))
    tables = tables.replace(interactions=tables.interactions.drop(columns=["ts"]))
    with pytest.raises(
        DataValidationError, match=r"interactions is missing required column\(s\) \['ts'\]"
    ):
        validate_tables(tables, ValidationConfig())


def test_empty_interactions_fail_clearly():
    tables = make_tables(_events(5))
    tables = tables.replace(interactions=tables.interactions.iloc[:0])
    with pytest.raises(DataValidationError, match="interactions is empty"):
        validate_tables(tables, ValidationConfig())


def test_ten_percent_garbage_is_quarantined_with_reasons_and_fails_above_threshold():
    tables = make_tables(_events(100))
    frame = tables.interactions.copy()
    bad = np.arange(0, 100, 10)
    frame.loc[bad[:4], "ts"] = pd.NaT
    frame.loc[bad[4:7], "event"] = "teleport"
    frame.loc[bad[7:], "weight"] = np.inf
    result = validate_tables(tables.replace(interactions=frame), ValidationConfig())
    assert result.counts["interactions"] == {"rows": 100, "quarantined": 10}
    quarantined = result.quarantine["interactions"]
    assert sorted(quarantined.index) == sorted(bad)
    assert quarantined["_reasons"].str.contains("ts: must not be null").sum() == 4
    assert quarantined["_reasons"].str.contains("event: must be one of").sum() == 3
    assert len(result.tables.interactions) == 90
    # 10% is above the default 5% threshold: the run must stop, naming table, column, rule.
    with pytest.raises(DataValidationError) as error:
        enforce_bad_share(result, ValidationConfig())
    message = str(error.value)
    assert "interactions: 10 of 100 rows (10.0%)" in message
    assert "interactions.event: must be one of" in message
    assert "teleport" in message
    # A looser threshold lets the run go on with the clean rows.
    enforce_bad_share(result, ValidationConfig(max_bad_share=0.2))


@pytest.mark.parametrize(
    ("rule", "clean_rows", "quarantined"),
    [("drop", 100, 0), ("quarantine", 100, 3), ("keep", 103, 0)],
)
def test_exact_duplicate_events_are_counted_and_dropped_quarantined_or_kept(
    rule, clean_rows, quarantined
):
    """Three rows repeated verbatim (a double export) were accepted silently."""
    tables = make_tables(_events(100))
    frame = tables.interactions
    repeated = pd.concat([frame, frame.iloc[[3, 3, 50]]], ignore_index=True)
    # Same user, item and time but another event is not a duplicate.
    other = frame.iloc[[7]].assign(event="purchase")
    repeated = pd.concat([repeated, other], ignore_index=True)
    config = ValidationConfig(duplicate_events=rule)
    result = validate_tables(tables.replace(interactions=repeated), config)
    assert result.duplicates == {"rule": rule, "rows": 3}
    assert result.summary()["exact_duplicate_events"] == {"rule": rule, "rows": 3}
    assert len(result.tables.interactions) == clean_rows + 1
    assert result.counts["interactions"]["quarantined"] == quarantined
    if rule == "quarantine":
        reasons = result.quarantine["interactions"]["_reasons"]
        assert (reasons == "exact duplicate of an earlier row").all()
        assert sorted(result.quarantine["interactions"].index) == [100, 101, 102]


def test_ids_longer_than_the_served_models_limit_are_quarantined_naming_it():
    """10,000-character user ids trained through the whole chain, then the served model
    refused them; validation holds them to the same limit (MAX_ID_CHARS)."""
    from components.ids import MAX_ID_CHARS
    from components.serving.request_parsing import RequestError, parse_requests

    long_user = "u" * 10_000
    events = _events(100)
    events[:3] = [(long_user, item, ts, event) for _, item, ts, event in events[:3]]
    events[3] = (events[3][0], "i" * (MAX_ID_CHARS + 1), events[3][2], events[3][3])
    events[4] = ("u" * MAX_ID_CHARS, *events[4][1:])
    result = validate_tables(make_tables(events), ValidationConfig())
    quarantined = result.quarantine["interactions"]
    assert len(quarantined) == 4
    assert quarantined["_reasons"].str.contains(f"at most {MAX_ID_CHARS} characters").all()
    assert "u" * MAX_ID_CHARS in set(result.tables.interactions["user_id"])
    assert long_user not in set(result.tables.users["user_id"])
    message = "; ".join(v.describe() for v in result.violations)
    assert "(10,000 characters)" in message and long_user not in message
    with pytest.raises(RequestError, match=f"at most {MAX_ID_CHARS}"):
        parse_requests([long_user])


def test_duplicate_item_ids_quarantine_the_items_and_their_interactions():
    tables = make_tables(_events(100))
    items = pd.concat([tables.items, tables.items.iloc[[0]]], ignore_index=True)
    result = validate_tables(tables.replace(items=items), ValidationConfig(max_bad_share=0.5))
    assert result.counts["items"]["quarantined"] == 2
    assert result.quarantine["items"]["_reasons"].str.contains("unique").all()
    duplicated = tables.items["item_id"].iloc[0]
    assert duplicated not in set(result.tables.interactions["item_id"])
    orphans = result.quarantine["interactions"]
    assert (orphans["item_id"] == duplicated).all()
    assert orphans["_reasons"].str.contains("must reference a valid row of items").all()


def test_negative_price_and_sold_before_listed_are_caught():
    tables = make_tables(
        _events(10),
        items={
            "i1": {"price": -5.0},
            "i2": {"created_at": "2026-02-01T00:00:00Z", "sold_at": "2026-01-01T00:00:00Z"},
        },
    )
    result = validate_tables(tables, ValidationConfig(max_bad_share=1.0))
    reasons = " ".join(result.quarantine["items"]["_reasons"])
    assert "price: must be >= 0" in reasons
    assert "sold_at must not be before created_at" in reasons


NOW = pd.Timestamp("2026-02-01T12:00:00Z")


def _dated(tables, rows, moment):
    frame = tables.interactions.copy()
    frame.loc[rows, "ts"] = pd.Timestamp(moment)
    return tables.replace(interactions=frame)


def test_rows_dated_after_ingestion_are_quarantined_as_future_and_bounded_by_the_share():
    tables = make_tables(_events(400))
    # A year ahead (the junk of issue 17), 2099, and just inside the one-day tolerance.
    tables = _dated(tables, [0, 1, 2], "2027-02-01T00:00:00Z")
    tables = _dated(tables, [3], "2099-01-01T00:00:00Z")
    tables = _dated(tables, [4], "2026-02-02T11:00:00Z")
    result = validate_tables(tables, ValidationConfig(), now=NOW)
    assert result.counts["interactions"] == {"rows": 400, "quarantined": 4}
    reasons = result.quarantine["interactions"]["_reasons"]
    assert sorted(reasons.index) == [0, 1, 2, 3]
    assert reasons.str.startswith("ts: future timestamp: after the ingestion time").all()
    assert "2026-02-01 12:00 UTC + validation.future_tolerance=1D" in reasons.iloc[0]
    assert result.tables.interactions["ts"].max() == pd.Timestamp("2026-02-02T11:00:00Z")
    enforce_bad_share(result, ValidationConfig())  # 1% is below the 5% bound
    # A tighter tolerance takes the row an hour ahead too; none disables the bound.
    tight = validate_tables(tables, ValidationConfig(future_tolerance="1h"), now=NOW)
    assert tight.counts["interactions"]["quarantined"] == 5
    off = validate_tables(tables, ValidationConfig(future_tolerance=None), now=NOW)
    assert off.counts["interactions"]["quarantined"] == 0


def test_future_rows_above_the_bad_share_fail_the_run_naming_the_rule():
    tables = _dated(make_tables(_events(100)), list(range(6)), "2099-01-01T00:00:00Z")
    result = validate_tables(tables, ValidationConfig(), now=NOW)
    with pytest.raises(DataValidationError) as error:
        enforce_bad_share(result, ValidationConfig())
    message = str(error.value)
    assert "interactions: 6 of 100 rows (6.0%)" in message
    assert "interactions.ts: future timestamp" in message and "2099-01-01" in message


def test_epoch_zero_rows_are_quarantined_before_the_configurable_floor():
    tables = make_tables(_events(100))
    tables = _dated(tables, [0, 1], "1970-01-01T00:00:00Z")
    tables = _dated(tables, [2], "1997-09-20T00:00:00Z")  # MovieLens-100K's era is kept
    result = validate_tables(tables, ValidationConfig(), now=NOW)
    reasons = result.quarantine["interactions"]["_reasons"]
    assert sorted(reasons.index) == [0, 1]
    assert reasons.str.startswith(
        "ts: before floor: before validation.min_timestamp=1990-01-01"
    ).all()
    raised = validate_tables(tables, ValidationConfig(min_timestamp="2000-01-01"), now=NOW)
    assert sorted(raised.quarantine["interactions"].index) == [0, 1, 2]
    none = validate_tables(tables, ValidationConfig(min_timestamp=None), now=NOW)
    assert none.counts["interactions"]["quarantined"] == 0


def test_item_and_user_dates_out_of_range_are_quarantined_with_their_interactions():
    tables = make_tables(
        _events(100),
        items={
            "i1": {"created_at": "2099-01-01T00:00:00Z"},
            "i2": {"created_at": "2025-12-01T00:00:00Z", "sold_at": "2099-01-01T00:00:00Z"},
            "i3": {"created_at": "1970-01-01T00:00:00Z"},
        },
    )
    users = tables.users.copy()
    users["created_at"] = pd.Series(pd.NaT, index=users.index, dtype=TIMESTAMP_DTYPE)
    users.loc[users["user_id"] == "u0", "created_at"] = pd.Timestamp("2099-01-01", tz="UTC")
    result = validate_tables(
        tables.replace(users=users), ValidationConfig(max_bad_share=1.0), now=NOW
    )
    items = result.quarantine["items"].set_index("item_id")["_reasons"]
    assert items["i1"].startswith("created_at: future timestamp")
    assert items["i2"].startswith("sold_at: future timestamp")
    assert items["i3"].startswith("created_at: before floor")
    assert result.quarantine["users"]["user_id"].tolist() == ["u0"]
    orphans = result.quarantine["interactions"]
    assert set(orphans["item_id"]) | set(orphans["user_id"]) >= {"i1", "i2", "i3", "u0"}
    assert not result.tables.interactions["item_id"].isin(["i1", "i2", "i3"]).any()
    assert not (result.tables.interactions["user_id"] == "u0").any()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("min_timestamp", "banana", "is not a date"),
        ("future_tolerance", "banana", "is not a positive duration"),
        ("future_tolerance", "-1D", "is not a positive duration"),
    ],
)
def test_time_bounds_are_checked_when_the_config_loads(field, value, message):
    with pytest.raises(ValueError, match=message):
        ValidationConfig(**{field: value})


def test_the_synthetic_market_validates_with_nothing_quarantined():
    tables = generate_marketplace(SyntheticSourceConfig(n_users=300, n_days=21)).tables
    result = validate_tables(tables, ValidationConfig())
    assert {name: count["quarantined"] for name, count in result.counts.items()} == {
        "interactions": 0,
        "items": 0,
        "users": 0,
    }


@needs_ml100k
@pytest.mark.needs_shared_data
def test_movielens_100k_validates_with_nothing_quarantined():
    tables = load_movielens_100k(MovieLens100kSourceConfig(path=ML100K))
    result = validate_tables(tables, ValidationConfig())
    assert result.counts["interactions"] == {"rows": 100_000, "quarantined": 0}
    assert sum(count["quarantined"] for count in result.counts.values()) == 0
