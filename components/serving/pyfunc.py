"""The MLflow pyfunc around `BundleRecommender`: request parsing and the signature.

Request (`dataframe_records`): one row per user, `{"user_id": "u42"}`, or for an anonymous
or session user `{"recent_item_ids": ["i1", "i2"]}` (both may be given). Params: `k`
(1..MAX_K, default 20) and `exclude_item_ids` (never returned to any row). A malformed
request raises an `MlflowException` with INVALID_PARAMETER_VALUE, which `mlflow models
serve` answers with HTTP 400 and the message, and keeps serving. Under `mlflow models
serve` the load also installs the request guard (`components.serving.server`): size,
nesting, content type and payload keys are checked before MLflow parses a request, and
error answers carry no stack trace or echoed input.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from components.serving.recommender import BundleRecommender
from components.serving.request_parsing import RequestError
from components.serving.server import install_request_guard
from components.settings import RewearSettings

BUNDLE_ARTIFACT = "bundle"
DEFAULT_K = 20
USER_COLUMN = "user_id"
SESSION_COLUMN = "recent_item_ids"


class RewearPyfunc(mlflow.pyfunc.PythonModel):
    """Input: rows with `user_id` and/or `recent_item_ids`. Params: `k`, `exclude_item_ids`.
    Output: ranked items per row (`request` is the row)."""

    def load_context(self, context: Any) -> None:
        settings = RewearSettings()
        self.recommender = BundleRecommender.load(context.artifacts[BUNDLE_ARTIFACT])
        self.recommender.max_answer_rows = settings.max_answer_rows
        install_request_guard(settings.max_request_bytes)

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Only the input is hinted, as a DataFrame: MLflow derives no second signature from
        that hint (it would from most others), and stops asking for hints at import."""
        params = params or {}
        try:
            check_request_columns(model_input)
            return self.recommender.recommend(
                column(model_input, USER_COLUMN),
                k=params.get("k", DEFAULT_K),
                exclude_item_ids=params.get("exclude_item_ids") or (),
                recent_item_ids=column(model_input, SESSION_COLUMN),
            )
        except RequestError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from error

    def answer_json(self, payload: dict[str, Any]) -> str | None:
        """The scoring server's JSON answer to a request the guard has checked, written from
        the recommender's columns: MLflow's own path builds a DataFrame from the records,
        enforces the schema cell by cell and converts the answer frame back, about 2 ms of
        a request that the bundle's ranked lists answer in under 1. None for anything but
        the plain request shapes, and for a request the recommender refuses: MLflow's path
        then answers it, with its own status and message. The same answers either way,
        but missing values are `null` here (`predictions_json`)."""
        request = direct_request(payload)
        if request is None:
            return None
        user_ids, sessions, k, excluded = request
        try:
            columns = self.recommender.recommend_columns(user_ids, k, excluded, sessions)
        except RequestError:
            return None
        return predictions_json(columns)


def direct_request(
    payload: dict[str, Any],
) -> tuple[list[str | None] | None, list[list[str] | None] | None, int, list[str]] | None:
    """(user ids, sessions, k, excluded ids) of a `dataframe_records` request whose rows all
    name the same columns with plain values (strings, lists of strings, nulls) and whose
    params are an integer `k` and a list of strings; None otherwise."""
    records = payload.get("dataframe_records")
    params = payload.get("params") or {}
    if not isinstance(records, list) or not records or not isinstance(params, dict):
        return None
    k = params.get("k", DEFAULT_K)
    excluded = params.get("exclude_item_ids", [])
    if type(k) is not int or not _strings(excluded):
        return None
    names = set(records[0]) if isinstance(records[0], dict) else None
    if not names or not names <= {USER_COLUMN, SESSION_COLUMN}:
        return None
    for record in records:
        if not isinstance(record, dict) or set(record) != names:
            return None
        user, session = record.get(USER_COLUMN), record.get(SESSION_COLUMN)
        if (user is not None and type(user) is not str) or (
            session is not None and not _strings(session)
        ):
            return None
    users = [record[USER_COLUMN] for record in records] if USER_COLUMN in names else None
    sessions = [record[SESSION_COLUMN] for record in records] if SESSION_COLUMN in names else None
    return users, sessions, k, excluded


def _strings(value: object) -> bool:
    return type(value) is list and all(type(item) is str for item in value)


def predictions_json(columns: dict[str, Any]) -> str:
    """`{"predictions": [row, ...]}`, the rows MLflow's scoring server writes for an answer
    frame, as standard JSON: a missing title, category, price or (anonymous row) user id
    is `null`, where MLflow's writer puts `NaN`, which is not JSON (RFC 8259; JavaScript's
    `JSON.parse` refuses it)."""
    values = [_json_values(column) for column in columns.values()]
    names = list(columns)
    rows = zip(*values, strict=True)
    return json.dumps({"predictions": [dict(zip(names, row, strict=True)) for row in rows]})


def _json_values(column: Any) -> list[object]:
    values = column.tolist() if isinstance(column, np.ndarray) else list(column)
    return [None if isinstance(value, float) and value != value else value for value in values]


def check_request_columns(model_input: object) -> None:
    """A request names users or sessions (`RequestError` saying what to send otherwise)."""
    if not isinstance(model_input, pd.DataFrame) or not (
        {USER_COLUMN, SESSION_COLUMN} & set(model_input.columns)
    ):
        raise RequestError(
            f"the request needs a `{USER_COLUMN}` column (one row per user, a string "
            f"id) or, for anonymous users, `{SESSION_COLUMN}` (a list of item ids)"
        )


def column(frame: pd.DataFrame, name: str) -> list[object] | None:
    """The request column `name` as a list (None when the request has no such column)."""
    return frame[name].tolist() if name in frame.columns else None


def model_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec("string", USER_COLUMN, required=False),
                ColSpec(Array("string"), SESSION_COLUMN, required=False),
            ]
        ),
        outputs=Schema(
            [
                ColSpec("string", "user_id", required=False),
                ColSpec("long", "rank"),
                ColSpec("string", "item_id"),
                ColSpec("double", "score"),
                ColSpec("string", "source"),
                ColSpec("string", "title", required=False),
                ColSpec("string", "category", required=False),
                ColSpec("double", "price", required=False),
                ColSpec("long", "request"),
            ]
        ),
        params=ParamSchema(
            [
                ParamSpec("k", "long", DEFAULT_K),
                ParamSpec("exclude_item_ids", "string", [], shape=(-1,)),
            ]
        ),
    )
