"""MLflow models-from-code entry point of the experiment model (see `pyfunc_model.py`):
kept free of logic; importing it registers the model with MLflow, so nothing imports it."""

import mlflow

from components.serving.experiment_pyfunc import ExperimentPyfunc

mlflow.models.set_model(ExperimentPyfunc())
