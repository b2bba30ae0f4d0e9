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

from typing import Any

import mlflow.pyfunc
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
