import numpy as np
import pandas as pd
import pytest

from components.config import ValidationConfig
from components.data.validation import (
    DataValidationError,
    enforce_bad_share,
    validate_tables,
)
from tests.conftest import make_tables


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
