"""`mlflow models serve -m models:/rewear@champion --env-manager local`, as users run it:
the real server on a free loopback port, answering `dataframe_records` requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.serving.server import model_server
from tests.conftest import TINY_SOLD


def post(url: str, body: bytes | dict, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture
def champion_server(tiny_champion: str, tmp_path: Path) -> Iterator[str]:
    with model_server("models:/rewear@champion", tiny_champion, tmp_path / "server.log") as base:
        yield f"{base}/invocations"


@pytest.mark.slow
def test_served_champion_ranks_and_refuses_bad_requests_without_going_down(champion_server):
    url = champion_server
    status, body = post(
        url,
        {
            "dataframe_records": [
                # Rows of one request share columns: [] where a row has no session.
                {"user_id": "u1", "recent_item_ids": []},
                {"user_id": "never-seen", "recent_item_ids": []},
                {"user_id": None, "recent_item_ids": ["i2"]},
            ],
            "params": {"k": 3, "exclude_item_ids": ["i6"]},
        },
    )
    assert status == 200, body
    rows = body["predictions"]
    by_request: dict[int, list[str]] = {}
    for row in rows:
        by_request.setdefault(row["request"], []).append(row["item_id"])
    # u1 bought i5; i0 is sold; i6 is excluded; the session is about dresses (i2's category).
    assert by_request == {0: ["i1", "i2", "i7"], 1: ["i5", "i1", "i2"], 2: ["i1", "i3", "i4"]}
    assert [row["rank"] for row in rows[:3]] == [1, 2, 3]
    assert rows[0]["source"] == "recent_popularity" and rows[0]["title"] == "listing 1"
    assert TINY_SOLD not in {row["item_id"] for row in rows}

    bad_requests = [
        ({"dataframe_records": [{"item": "x"}]}, "needs a `user_id` column"),
        ({"dataframe_records": [{"user_id": None}]}, "row 0 has no user_id"),
        ({"dataframe_records": [{"user_id": "u1"}], "params": {"k": 0}}, "k must be between"),
        ({"dataframe_records": [{"user_id": "u1"}], "params": {"k": 5000}}, "got 5000"),
        ({"dataframe_records": [{"user_id": "u1"}], "params": {"k": "ten"}}, "k"),
        ({"dataframe_records": [{"user_id": 12}]}, "user_id"),
        (
            {"dataframe_records": [{"user_id": "u1"}], "params": {"exclude_item_ids": "i1"}},
            "exclude_item_ids",
        ),
        (b"{not json", "is not valid JSON (Expecting property name"),
        # Nested, oversized, other payload shapes: refused before MLflow parses them.
        (b'{"dataframe_records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests too deep"),
        ({"dataframe_records": [{"user_id": [[[[[["u1"]]]]]]}]}, "nests more than 6 levels deep"),
        ({"dataframe_records": [{"user_id": "u" * 9_000_000}]}, "at most 8,388,608"),
        ({"inputs": [{"user_id": "u1"}]}, "under `dataframe_records`"),
        ({"instances": [{"user_id": "u1"}]}, "under `dataframe_records`"),
        ({"dataframe_records": [{"user_id": "u1"}], "params": {"K": 5}}, "unknown params ['K']"),
        ({"dataframe_records": [1, 2]}, "row 0 of `dataframe_records` is not an object"),
        ({"dataframe_records": [{"user_id": "u" * 300}]}, "has 300 characters"),
        (
            {
                "dataframe_records": [{"user_id": f"u{n}"} for n in range(1000)],
                "params": {"k": 1000},
            },
            "1000 rows x k=1000 = 1,000,000 answers; at most 100,000 per call",
        ),
    ]
    for request, message in bad_requests:
        status, body = post(url, request)
        assert 400 <= status < 500, (request, status, body)
        assert message in body.get("message", ""), (request, body)
        # The message only: no stack trace, no echoed request, no server path.
        assert set(body) <= {"error_code", "message", "sqlstate", "error_class"}, body
        assert "Failed to predict data" not in body["message"] and "/" not in body["message"]
    status, body = post(url, {"dataframe_records": [{"user_id": "u1"}], "x": 1})
    assert status == 400
    status, _ = post(url, b'{"dataframe_records": [{"user_id": "u1"}]}', "text/csv")
    assert status == 415

    # Still serving after every bad request.
    status, body = post(url, {"dataframe_records": [{"user_id": "never-seen"}], "params": {"k": 1}})
    assert status == 200 and body["predictions"][0]["item_id"] == "i5"
