"""The scoring server's direct answer (`RewearPyfunc.answer_json`, installed by the request
guard): what MLflow's own path answers, in standard JSON, and MLflow's path for everything
else."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.pyfunc import scoring_server

from components.serving.pyfunc import direct_request
from components.serving.server import direct_answer, plain_json
from tests.conftest import register_tiny_champion

JSON = "application/json"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> mlflow.pyfunc.PyFuncModel:
    """The tiny champion (its most popular listing on sale has no title, category or
    price) loaded as `mlflow models serve` loads it."""
    root = tmp_path_factory.mktemp("direct")
    tracking_uri = register_tiny_champion(root / "home", root / "bundle", unknown_attributes=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow.pyfunc.load_model("models:/rewear@champion")


def mlflow_answer(model: mlflow.pyfunc.PyFuncModel, request: dict) -> list[dict]:
    """MLflow's path's rows, its NaN for a missing value read as None."""
    body = json.dumps(request).encode()
    schema = model.metadata.get_input_schema()
    answered = scoring_server.invocations(body, JSON, model, schema)
    assert answered.status == 200, answered.response
    return json.loads(answered.response, parse_constant=lambda constant: None)["predictions"]


def strict_json(text: str) -> list[dict]:
    """Rows of an answer that must be standard JSON (no NaN or Infinity)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)["predictions"]


@pytest.mark.parametrize(
    "request_",
    [
        {"dataframe_records": [{"user_id": "u1"}], "params": {"k": 3}},
        {"dataframe_records": [{"user_id": "u1"}, {"user_id": "nobody"}]},
        {
            "dataframe_records": [{"user_id": "u2"}],
            "params": {"k": 4, "exclude_item_ids": ["i5", "i9", "unknown"]},
        },
        {"dataframe_records": [{"recent_item_ids": ["i1", "i7"]}], "params": {"k": 5}},
        {
            "dataframe_records": [
                {"user_id": "u1", "recent_item_ids": []},
                {"user_id": None, "recent_item_ids": ["i6"]},
                {"user_id": "u3", "recent_item_ids": None},
            ],
            "params": {"k": 2},
        },
        {"dataframe_records": [{"user_id": "u1"}], "params": {"k": 1000}},
    ],
)
def test_the_direct_answer_is_mlflows_answer(served, request_):
    direct = direct_answer(served, request_)

    assert direct is not None
    assert strict_json(direct) == mlflow_answer(served, request_)


def test_missing_values_are_json_null(served):
    """The top listing on sale, i5, has no title, category or price; a session row has no
    user id: null each (MLflow's writer puts NaN, which JSON parsers may refuse)."""
    request = {
        "dataframe_records": [
            {"user_id": "nobody", "recent_item_ids": None},
            {"user_id": None, "recent_item_ids": ["i1"]},
        ],
        "params": {"k": 1},
    }
    rows = strict_json(direct_answer(served, request))

    assert rows[0]["item_id"] == "i5"
    assert rows[0]["title"] is None and rows[0]["category"] is None and rows[0]["price"] is None
    assert rows[1]["user_id"] is None


@pytest.mark.parametrize(
    "request_",
    [
        {"dataframe_records": [{"user_id": "u1"}], "params": {"k": "3"}},
        {"dataframe_records": [{"user_id": "u1"}], "params": {"k": True}},
        {"dataframe_records": [{"user_id": "u1"}], "params": {"k": 0}},
        {"dataframe_records": [{"user_id": 42}]},
        {"dataframe_records": [{"user_id": "u1"}, {"recent_item_ids": ["i1"]}]},
        {"dataframe_records": [{"user_id": "u1", "age": 3}]},
        {"dataframe_records": [{"recent_item_ids": "i1"}]},
        {"dataframe_records": [{"user_id": "u1"}], "params": {"exclude_item_ids": "i1"}},
        {"dataframe_split": {"columns": ["user_id"], "data": [["u1"]]}},
    ],
)
def test_anything_but_the_plain_shapes_is_left_to_mlflows_path(served, request_):
    """Other types, mixed columns, split frames and requests the recommender refuses get
    MLflow's own conversion and its own error answer."""
    assert direct_answer(served, request_) is None


def test_only_plain_json_content_types_are_answered_directly():
    assert plain_json("application/json") and plain_json("application/json; charset=UTF-8")
    assert not plain_json("application/json; charset=latin-1")
    assert not plain_json("application/json; format=pandas-records")
    assert not plain_json("text/csv") and not plain_json(None)


def test_direct_requests_read_columns_in_row_order():
    request = {
        "dataframe_records": [
            {"user_id": "a", "recent_item_ids": None},
            {"user_id": None, "recent_item_ids": ["i"]},
        ],
        "params": {"k": 7, "exclude_item_ids": ["x"]},
    }
    assert direct_request(request) == (["a", None], [None, ["i"]], 7, ["x"])
    assert direct_request({"dataframe_records": [{"user_id": "a"}]}) == (["a"], None, 20, [])


def test_the_experiment_model_keeps_mlflows_path():
    """Its answers log exposures: it must never be answered around its own `predict`."""
    from components.serving.experiment_pyfunc import ExperimentPyfunc

    assert not hasattr(ExperimentPyfunc(), "answer_json")
