"""MLflow models-from-code entry point: MLflow imports this file to build the served model.

Kept free of logic: the work is in `components.serving.recommender`, wrapped for MLflow by
`components.serving.pyfunc`. Importing this module registers the model with MLflow, which is
why nothing else imports it.
"""

import mlflow

from components.serving.pyfunc import RewearPyfunc

mlflow.models.set_model(RewearPyfunc())
