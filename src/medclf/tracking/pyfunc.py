"""A medclf run as an MLflow pyfunc model (what `MlflowBackend.log_model` logs)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medclf.tracking.mlflow_backend import mlflow_module

PythonModel = mlflow_module().pyfunc.PythonModel


class MedclfModel(PythonModel):
    """Input: uint8 images `N x S x S` as the cache holds them, or a table with a `path` column of DICOM/PNG/JPEG
    files (or a list of paths). Output: the Predictor's table (`prob`, `predicted`, `threshold`, ...), so the
    probabilities are the ones `medclf predict` gives, test-time flip included."""

    def load_context(self, context) -> None:
        from medclf.runs import open_run

        self.predictor = open_run(context.artifacts["run"]).predictor()

    def predict(self, context, model_input, params=None) -> pd.DataFrame:  # no hints: MLflow reads them as a schema
        if isinstance(model_input, pd.DataFrame) and "path" in model_input.columns:
            return self.predictor.predict_files(model_input["path"].astype(str).tolist())
        if isinstance(model_input, (list, tuple)) and model_input and isinstance(model_input[0], str):
            return self.predictor.predict_files(list(model_input))
        return self.predictor.columns(self.predictor.predict_arrays(np.asarray(model_input)))  # uint8 checked there
