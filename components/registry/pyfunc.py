"""The MLflow pyfunc around `BundleRecommender`: request parsing and the signature."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from components.registry.bundle import BundleRecommender, RequestError

BUNDLE_ARTIFACT = "bundle"
DEFAULT_K = 20


class RewearPyfunc(mlflow.pyfunc.PythonModel):
    """Input: rows with a `user_id`. Params: `k`. Output: ranked items per user."""

    def load_context(self, context: Any) -> None:
        self.recommender = BundleRecommender.load(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input, params=None):
        """Hints are left off on purpose: MLflow would derive a second, looser signature."""
        params = params or {}
        if not isinstance(model_input, pd.DataFrame) or "user_id" not in model_input.columns:
            raise RequestError("the request needs a `user_id` column (one row per user)")
        return self.recommender.recommend(
            list(model_input["user_id"]), k=params.get("k", DEFAULT_K)
        )


def model_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "user_id")]),
        outputs=Schema(
            [
                ColSpec("string", "user_id"),
                ColSpec("long", "rank"),
                ColSpec("string", "item_id"),
                ColSpec("double", "score"),
                ColSpec("string", "source"),
                ColSpec("string", "title", required=False),
                ColSpec("string", "category", required=False),
                ColSpec("double", "price", required=False),
            ]
        ),
        params=ParamSchema([ParamSpec("k", "long", DEFAULT_K)]),
    )
