"""Attribution credits an outcome to the latest exposure of that item to that user within
the event's window, and to nothing else."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from components.experiments.attribution import (
    ATTRIBUTED_COLUMNS,
    DEFAULT_ATTRIBUTION_WINDOWS,
    attribute_outcomes,
    validate_windows,
)
from components.experiments.exposure_log import exposure_table
from components.experiments.schema import CONTROL, DETERMINISTIC, TREATMENT, USER_UNIT

T0 = pd.Timestamp("2026-03-01T12:00:00Z")
HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)


def exposures(*slots: tuple[str, str, str, pd.Timestamp, str]) -> pd.DataFrame:
    """(request_id, unit_id, item_id, served_at, variant) per slot, as the log reads back."""
    rows = pd.DataFrame(
        {
            "request_id": [s[0] for s in slots],
            "served_at": [s[3] for s in slots],
            "experiment_id": "exp-1",
            "unit_id": [s[1] for s in slots],
            "unit_kind": USER_UNIT,
            "variant": [s[4] for s in slots],
            "position": range(len(slots)),
            "item_id": [s[2] for s in slots],
            "score": 1.0,
            "source": "two_tower",
            "team": None,
            "model_name": "rewear",
            "model_version": "7",
            "policy": DETERMINISTIC,
            "propensity": 1.0,
        }
    )
    return exposure_table(rows).to_pandas()


def interactions(*events: tuple[str, str, pd.Timestamp, str]) -> pd.DataFrame:
    """(user_id, item_id, ts, event) per interaction, in the canonical dtypes."""
    return pd.DataFrame(
        {
            "user_id": pd.Series([e[0] for e in events], dtype="string"),
            "item_id": pd.Series([e[1] for e in events], dtype="string"),
            "ts": pd.Series([e[2] for e in events]).astype("datetime64[us, UTC]"),
            "event": pd.Series([e[3] for e in events], dtype="string"),
            "weight": 1.0,
        }
    )


def test_the_latest_exposure_before_the_event_wins() -> None:
    shown = exposures(
        ("r1", "u1", "i1", T0, CONTROL),
        ("r2", "u1", "i1", T0 + 2 * HOUR, TREATMENT),
        ("r3", "u1", "i1", T0 + 5 * HOUR, CONTROL),  # after the like: not its cause
    )
    done = interactions(("u1", "i1", T0 + 3 * HOUR, "like"))
    attributed = attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS)
    assert attributed["request_id"].tolist() == ["r2"]
    assert attributed["variant"].tolist() == [TREATMENT]
    assert attributed["served_at"].tolist() == [T0 + 2 * HOUR]
    assert list(attributed.columns) == list(ATTRIBUTED_COLUMNS)


def test_an_event_at_the_instant_of_serving_is_attributed() -> None:
    shown = exposures(("r1", "u1", "i1", T0, CONTROL))
    attributed = attribute_outcomes(
        shown, interactions(("u1", "i1", T0, "view")), DEFAULT_ATTRIBUTION_WINDOWS
    )
    assert attributed["request_id"].tolist() == ["r1"]


def test_an_exposure_after_the_event_is_not_used() -> None:
    shown = exposures(("r1", "u1", "i1", T0 + HOUR, CONTROL))
    done = interactions(("u1", "i1", T0, "purchase"))
    assert attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS).empty


def test_an_event_outside_its_window_is_not_attributed() -> None:
    shown = exposures(("r1", "u1", "i1", T0, CONTROL))
    done = interactions(
        ("u1", "i1", T0 + HOUR, "view"),  # on the edge: in
        ("u1", "i1", T0 + HOUR + pd.Timedelta(seconds=1), "view"),  # out
        ("u1", "i1", T0 + 2 * DAY, "like"),  # out
    )
    attributed = attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS)
    assert attributed["ts"].tolist() == [T0 + HOUR]


def test_each_event_has_its_own_window_and_unlisted_events_are_left_out() -> None:
    shown = exposures(("r1", "u1", "i1", T0, CONTROL))
    later = T0 + 3 * DAY
    done = interactions(
        ("u1", "i1", later, "view"),  # 1 h: out
        ("u1", "i1", later, "add_to_bag"),  # 1 day: out
        ("u1", "i1", later, "purchase"),  # 7 days: in
        ("u1", "i1", T0 + HOUR, "rating"),  # no window: never attributed
    )
    attributed = attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS)
    assert attributed["event"].tolist() == ["purchase"]
    wider = attribute_outcomes(shown, done, {"view": 4 * DAY, "purchase": DAY})
    assert wider["event"].tolist() == ["view"]


def test_another_users_or_items_exposure_is_not_used() -> None:
    shown = exposures(
        ("r1", "u2", "i1", T0, CONTROL),  # another user, same item
        ("r2", "u1", "i2", T0, TREATMENT),  # same user, another item
    )
    done = interactions(("u1", "i1", T0 + pd.Timedelta(minutes=5), "view"))
    assert attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS).empty


def test_attributed_rows_keep_the_interactions_and_exposures_dtypes() -> None:
    shown = exposures(("r1", "u1", "i1", T0, CONTROL), ("r2", "u9", "i9", T0, CONTROL))
    done = interactions(("u1", "i1", T0 + HOUR, "like"), ("u5", "i5", T0, "like"))
    attributed = attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS)
    assert len(attributed) == 1
    for column in done.columns:
        assert attributed[column].dtype == done[column].dtype, column
    for column in ATTRIBUTED_COLUMNS[len(done.columns) :]:
        assert attributed[column].dtype == shown[column].dtype, column
    empty = attribute_outcomes(shown.iloc[:0], done, DEFAULT_ATTRIBUTION_WINDOWS)
    assert list(empty.columns) == list(ATTRIBUTED_COLUMNS)
    assert empty.dtypes.equals(attributed.dtypes)


def test_attribution_matches_a_direct_search_on_random_logs() -> None:
    rng = np.random.default_rng(7)
    slots = [
        (
            f"r{n}",
            f"u{rng.integers(5)}",
            f"i{rng.integers(5)}",
            T0 + rng.integers(72) * HOUR,
            CONTROL,
        )
        for n in range(200)
    ]
    events = [
        (
            f"u{rng.integers(5)}",
            f"i{rng.integers(5)}",
            T0 + rng.integers(80 * 60) * pd.Timedelta(minutes=1),
            str(rng.choice(["view", "like", "purchase"])),
        )
        for _ in range(300)
    ]
    shown, done = exposures(*slots), interactions(*events)
    attributed = attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS)

    expected = {}
    for user, item, ts, event in events:
        candidates = shown[
            (shown["unit_id"] == user)
            & (shown["item_id"] == item)
            & (shown["served_at"] <= ts)
            & (ts - shown["served_at"] <= DEFAULT_ATTRIBUTION_WINDOWS[event])
        ]
        if len(candidates):
            latest = candidates.sort_values(["served_at", "request_id", "position"]).iloc[-1]
            expected.setdefault((user, item, ts, event), []).append(latest["request_id"])
    found: dict[tuple[str, str, pd.Timestamp, str], list[str]] = {}
    for row in attributed.itertuples():
        found.setdefault((row.user_id, row.item_id, row.ts, row.event), []).append(row.request_id)
    assert found == expected
    assert len(attributed) > 50


@pytest.mark.slow  # about 5 s on two busy cores, half of it building the frames
def test_a_million_exposures_and_interactions_attribute_in_seconds() -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    users = rng.integers(0, 50_000, n).astype(str)
    items = rng.integers(0, 20_000, n).astype(str)
    served = T0 + pd.to_timedelta(rng.integers(0, 14 * 86_400, n), unit="s")
    shown = pd.DataFrame(
        {
            "unit_id": users,
            "item_id": items,
            "request_id": np.char.add("r", np.arange(n).astype(str)),
            "served_at": served,
            "experiment_id": "exp-1",
            "variant": CONTROL,
            "team": None,
            "position": np.zeros(n, dtype=np.int32),
            "model_version": "7",
            "policy": DETERMINISTIC,
            "propensity": 1.0,
        }
    )
    picked = rng.integers(0, n, n)
    done = pd.DataFrame(
        {
            "user_id": pd.Series(users[picked], dtype="string"),
            "item_id": pd.Series(items[picked], dtype="string"),
            "ts": pd.Series(served[picked] + pd.to_timedelta(rng.integers(0, 86_400, n), "s")),
            "event": pd.Series(rng.choice(["view", "like", "purchase"], n), dtype="string"),
            "weight": 1.0,
        }
    )
    started = time.perf_counter()
    attributed = attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS)
    elapsed = time.perf_counter() - started
    assert len(attributed) > n / 3  # every like and purchase, and some views
    assert elapsed < 20, f"{elapsed:.1f} s"


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        ({"click": HOUR}, r"unknown event 'click'.*use one of"),
        ({"view": pd.Timedelta(0)}, r"'view'.*positive duration"),
        ({"like": -DAY}, r"'like'.*positive duration"),
        ({"like": "soon"}, r"'like'.*not a duration.*pd.Timedelta"),
    ],
)
def test_invalid_windows_are_refused_naming_the_event(
    windows: dict[str, pd.Timedelta | str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        validate_windows(windows)


def test_windows_given_as_strings_are_read_as_durations() -> None:
    assert validate_windows({"view": "30min"}) == {"view": pd.Timedelta(minutes=30)}


def test_interactions_without_a_timezone_are_refused() -> None:
    shown = exposures(("r1", "u1", "i1", T0, CONTROL))
    done = interactions(("u1", "i1", T0, "view"))
    done["ts"] = done["ts"].dt.tz_localize(None)
    with pytest.raises(ValueError, match=r"interactions.ts.*utc=True"):
        attribute_outcomes(shown, done, DEFAULT_ATTRIBUTION_WINDOWS)
