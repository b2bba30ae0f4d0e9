"""The MLflow pyfunc around `ExperimentRecommender`: the experiment model served with the
same `mlflow models serve` command as the champion.

Request rows as the champion's (`user_id`, `recent_item_ids`), plus an optional
`session_id`: the unit of an anonymous row (without one, each anonymous request is a unit
of its own). Params: `k`, `exclude_item_ids`, and `served_at` (an ISO UTC time to log
instead of now: replays and simulations). Answers carry `request_id`, `variant` and
`team` beside the champion's columns. Every slot goes to the experiment's exposure log;
`REWEAR_EXPOSURE_LOG` overrides where (e.g. a PostgreSQL URL on a serving host).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from components.experiments.exposure_log import ExposureLogger, open_exposure_sink
from components.serving.experiment import ExperimentRecommender, ExperimentSpec
from components.serving.pyfunc import (
    DEFAULT_K,
    SESSION_COLUMN,
    USER_COLUMN,
    check_request_columns,
    column,
    model_signature,
)
from components.serving.recommender import BundleRecommender
from components.serving.request_parsing import RequestError
from components.serving.server import PARAMS, call_at_server_shutdown, install_request_guard
from components.settings import RewearSettings

EXPERIMENT_ARTIFACT = "experiment"
SESSION_ID_COLUMN = "session_id"


class ExperimentPyfunc(mlflow.pyfunc.PythonModel):
    """Input: rows with `user_id`, `recent_item_ids` and/or `session_id`. Params: `k`,
    `exclude_item_ids`, `served_at`. Output: the champion's columns plus `request_id`,
    `variant`, `team`."""

    def load_context(self, context: Any) -> None:
        settings = RewearSettings()
        folder = Path(context.artifacts[EXPERIMENT_ARTIFACT])
        spec = ExperimentSpec.read(folder)
        sink = open_exposure_sink(settings.exposure_log or spec.exposure_log)
        exposures = ExposureLogger(sink)
        call_at_server_shutdown(exposures.close)
        self.experiment = ExperimentRecommender.load(folder, exposures)
        for arm in self.experiment.arms.values():
            if isinstance(arm, BundleRecommender):
                arm.max_answer_rows = settings.max_answer_rows
        install_request_guard(settings.max_request_bytes, (*PARAMS, "served_at"))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Hinted as the champion's pyfunc is (components.serving.pyfunc)."""
        params = params or {}
        try:
            check_request_columns(model_input)
            return self.experiment.recommend(
                column(model_input, USER_COLUMN),
                k=params.get("k", DEFAULT_K),
                exclude_item_ids=params.get("exclude_item_ids") or (),
                recent_item_ids=column(model_input, SESSION_COLUMN),
                session_ids=column(model_input, SESSION_ID_COLUMN),
                served_at=_served_at(params.get("served_at")),
            )
        except RequestError as error:
            raise MlflowException.invalid_parameter_value(str(error)) from error


def _served_at(value: object) -> pd.Timestamp | None:
    if value in (None, ""):
        return None
    try:
        stamp = pd.Timestamp(str(value))
    except ValueError:
        raise RequestError(
            f"served_at {value!r} is not a time: send an ISO UTC time, e.g. "
            "2026-03-02T10:00:00Z, or leave it out to log the time of the request"
        ) from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def experiment_signature() -> ModelSignature:
    base = model_signature()
    return ModelSignature(
        inputs=Schema([*base.inputs.inputs, ColSpec("string", SESSION_ID_COLUMN, required=False)]),
        outputs=Schema(
            [
                *base.outputs.inputs,
                ColSpec("string", "request_id"),
                ColSpec("string", "variant"),
                ColSpec("string", "team", required=False),
            ]
        ),
        params=ParamSchema([*base.params.params, ParamSpec("served_at", "string", "")]),
    )
