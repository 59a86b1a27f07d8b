"""The pyfunc's model, as MLflow's "models from code" wants it: a script that names the model.

MLflow runs this file when it loads the logged model (never imported by the project itself), so
the served model is the code in `pipeline/serving/` that ships with it, not a pickle of objects.
"""

import mlflow

from pipeline.serving.pyfunc import ServingModel

mlflow.models.set_model(ServingModel())
