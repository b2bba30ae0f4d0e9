"""The request guard of `mlflow models serve` (no server here: the checks and the wrapper
around MLflow's `invocations`; tests/components/serving/test_server.py runs the server)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import scoring_server

from components.serving.pyfunc import RewearPyfunc
from components.serving.server import (
    MAX_JSON_DEPTH,
    RefusedRequestError,
    check_request,
    install_request_guard,
    json_depth,
)

JSON = "application/json"
LIMIT = 1_000_000


def test_documented_request_shapes_pass_and_stay_within_the_depth_limit():
    for request in (
        {"dataframe_records": [{"user_id": "u1", "recent_item_ids": ["i1"]}]},
        {"dataframe_records": [{"user_id": "u1"}], "params": {"k": 5, "exclude_item_ids": ["i"]}},
        {"dataframe_split": {"columns": ["user_id", "recent_item_ids"], "data": [["u", ["i"]]]}},
    ):
        body = json.dumps(request).encode()
        assert check_request(body, f"{JSON}; charset=utf-8", LIMIT) == request
        assert json_depth(request) <= MAX_JSON_DEPTH


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{}", "text/csv", 415, "Content-Type: application/json (got 'text/csv')"),
        (b"{}", None, 415, "(got None)"),
        (b" " * (LIMIT + 1), JSON, 413, "has 1,000,001 bytes; at most 1,000,000"),
        (b"[" * 50_000 + b"]" * 50_000, JSON, 400, "nests too deep"),
        (b'{"a": ' * 50 + b"1" + b"}" * 50, JSON, 400, "nests more than 6 levels deep"),
        (b'{"dataframe_records": [', JSON, 400, "not valid JSON (Expecting value at line 1"),
        (b"\xff\xfe{}", JSON, 400, "not UTF-8 JSON"),
        (b"[1]", JSON, 400, "must be a JSON object, got a list"),
        (b'{"inputs": {"user_id": ["u1"]}}', JSON, 400, "`inputs`: this model reads one row"),
        (b'{"instances": [{"user_id": "u1"}]}', JSON, 400, "under `dataframe_records`"),
        (b'{"dataframe_records": [{}], "dataframe_split": {}}', JSON, 400, "`dataframe_split`"),
        (b'{"dataframe_records": [{"user_id": "u"}], "params": 3}', JSON, 400, "`params` must"),
        (b'{"dataframe_records": [{"user_id": "u"}], "params": {"K": 3}}', JSON, 400, "['K']"),
        (b'{"dataframe_records": []}', JSON, 400, "must be a non-empty list of rows"),
        (b'{"dataframe_records": [{"user_id": "u"}, "u2"]}', JSON, 400, "row 1 of"),
    ],
)
def test_malformed_bodies_are_refused_with_a_status_and_the_documented_shape(
    body, content_type, status, message
):
    with pytest.raises(RefusedRequestError) as raised:
        check_request(body, content_type, LIMIT)
    assert raised.value.status == status
    assert message in str(raised.value)
    assert "dataframe_records" in str(raised.value) or status == 413


@pytest.fixture
def guard(monkeypatch):
    """The guard installed as `mlflow models serve` would (its model-path variable set)
    around `fake`, a stand-in for MLflow's invocations that raises what it is given."""
    raised: list[BaseException] = []

    def fake(data, content_type, model, input_schema):
        raise raised[0]

    monkeypatch.setenv(scoring_server._SERVER_MODEL_PATH, "/models/x")
    monkeypatch.setattr(scoring_server, "invocations", fake)
    assert install_request_guard(LIMIT) and install_request_guard(LIMIT)
    guarded = scoring_server.invocations
    assert guarded is not fake

    def call(error: BaseException) -> dict:
        raised[:] = [error]
        with pytest.raises(MlflowException) as answer:
            guarded(b'{"dataframe_records": [{"user_id": "u1"}]}', JSON, None, None)
        return {
            "status": answer.value.get_http_status_code(),
            **json.loads(answer.value.serialize_as_json()),
        }

    return call


def test_error_answers_keep_the_models_message_without_the_echoed_request(guard):
    wrapped = MlflowException(
        "Failed to predict data '   user_id\n0  u1'. \nError: k must be between 1 and 1000",
        error_code=INVALID_PARAMETER_VALUE,
    )
    answer = guard(wrapped)
    assert answer["status"] == 400 and answer["message"] == "k must be between 1 and 1000"


def test_unexpected_errors_answer_500_without_stack_trace_or_paths(guard, caplog):
    traced = MlflowException(
        "Encountered an unexpected error while evaluating the model.",
        error_code=INVALID_PARAMETER_VALUE,
        stack_trace='File "/srv/app/components/serving/bundle.py", line 1',
    )
    for error in (traced, RecursionError("maximum recursion depth exceeded")):
        answer = guard(error)
        assert answer["status"] == 500
        assert "stack_trace" not in answer and "/srv" not in answer["message"]
        assert "the server log has the details" in answer["message"]
    assert "/srv/app/components/serving/bundle.py" in caplog.text  # logged, not answered


def test_the_guard_is_not_installed_outside_the_scoring_server(monkeypatch):
    monkeypatch.delenv(scoring_server._SERVER_MODEL_PATH, raising=False)
    original = scoring_server.invocations
    assert install_request_guard(LIMIT) is False
    assert scoring_server.invocations is original


def test_the_answer_row_cap_is_read_from_the_environment(tiny_bundle, monkeypatch):
    monkeypatch.setenv("REWEAR_MAX_ANSWER_ROWS", "10")
    model = RewearPyfunc()
    model.load_context(SimpleNamespace(artifacts={"bundle": str(tiny_bundle)}))
    import pandas as pd

    frame = pd.DataFrame({"user_id": ["a", "b", "c"]})
    assert len(model.predict(None, frame, params={"k": 3})) == 9
    with pytest.raises(MlflowException, match=r"3 rows x k=4 = 12 answers; at most 10 per call"):
        model.predict(None, frame, params={"k": 4})
