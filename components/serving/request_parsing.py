"""Request parsing and validation for the served model: request rows, `k`, item id lists.

Kept apart from the recommender so the limits a request must meet, and the messages that
name the field and the fix, are in one place; `BundleRecommender.recommend` calls these
before it ranks anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.ids import MAX_ID_CHARS
from components.settings import RewearSettings

MAX_K = 1000
#: Request limits: rows per request, item ids per session, excluded item ids.
MAX_ROWS = 1000
#: Default cap on answer rows per request (request rows x k); `REWEAR_MAX_ANSWER_ROWS`
#: sets it for a server: without it one request could ask for hundreds of MB of answers.
MAX_ANSWER_ROWS: int = RewearSettings.model_fields["max_answer_rows"].default
MAX_RECENT_ITEMS = 500
MAX_EXCLUDED_ITEMS = 10_000


class RequestError(ValueError):
    """A caller's request is malformed; the message names the field and the fix."""


@dataclass(frozen=True)
class RecommendationRequest:
    """One request row: a known user, an anonymous session (recent item ids), or both."""

    user_id: str | None
    recent_item_ids: tuple[str, ...] = ()


def validate_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise RequestError(f"k must be an integer between 1 and {MAX_K}, got {_shown(k)}")
    if not 1 <= int(k) <= MAX_K:
        raise RequestError(f"k must be between 1 and {MAX_K}, got {k}")
    return int(k)


def parse_requests(
    user_ids: Sequence[object] | None, recent_item_ids: Sequence[object] | None = None
) -> list[RecommendationRequest]:
    """Request rows from the `user_id` and `recent_item_ids` columns (either may be absent).

    Every row needs a user id (a non-empty string) or a non-empty list of recent item ids."""
    if (
        user_ids is not None
        and recent_item_ids is not None
        and len(user_ids) != len(recent_item_ids)
    ):
        raise RequestError(
            f"user_id has {len(user_ids)} rows but recent_item_ids {len(recent_item_ids)}: "
            "send one value of each per row (null where a row has none)"
        )
    n_rows = len(user_ids if user_ids is not None else recent_item_ids or ())
    if n_rows == 0:
        raise RequestError(
            "the request has no rows: send one row per user with a `user_id` (string) or, "
            "for an anonymous user, `recent_item_ids` (a list of item id strings)"
        )
    if n_rows > MAX_ROWS:
        raise RequestError(f"the request has {n_rows} rows; send at most {MAX_ROWS} per call")
    requests = []
    for row in range(n_rows):
        user = None if user_ids is None else _user_id(user_ids[row], row)
        recent: tuple[str, ...] = ()
        if recent_item_ids is not None:
            recent = validate_item_ids(
                recent_item_ids[row], f"recent_item_ids (row {row})", MAX_RECENT_ITEMS
            )
        if user is None and not recent:
            raise RequestError(
                f"row {row} has no user_id and no recent_item_ids: send a user_id string, or "
                "the ids of the items an anonymous user just viewed as recent_item_ids"
            )
        requests.append(RecommendationRequest(user, recent))
    return requests


def validate_item_ids(value: object, name: str, limit: int) -> tuple[str, ...]:
    """A list of item id strings (null: empty); a bare string is refused, not split."""
    if _is_missing(value):
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        raise RequestError(
            f'{name} must be a list of item id strings, got {_shown(value)}; e.g. ["i1", "i2"]'
        )
    items = tuple(value)
    if len(items) > limit:
        raise RequestError(f"{name} has {len(items)} item ids; send at most {limit}")
    bad = [item for item in items if not isinstance(item, str) or not item]
    if bad:
        raise RequestError(
            f"{name} must hold non-empty item id strings, got {_shown(bad[0])}; send ids as strings"
        )
    long = [item for item in items if len(item) > MAX_ID_CHARS]
    if long:
        raise RequestError(
            f"{name} holds an item id of {len(long[0]):,} characters; ids have at most "
            f"{MAX_ID_CHARS}"
        )
    return items


def _shown(value: object) -> str:
    """A request value quoted in an error message, cut short (a message must stay small)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _user_id(value: object, row: int) -> str | None:
    if _is_missing(value):
        return None
    if not isinstance(value, str) or not value:
        raise RequestError(
            f"user_id in row {row} must be a non-empty string, got {_shown(value)}; send ids "
            'as strings (e.g. "u000042")'
        )
    if len(value) > MAX_ID_CHARS:
        raise RequestError(
            f"user_id in row {row} has {len(value):,} characters; ids have at most {MAX_ID_CHARS}"
        )
    return value


def _is_missing(value: object) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and np.isnan(value)
