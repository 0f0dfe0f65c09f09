"""The MLflow ``python_function`` wrapper of every registered workbench model.

Logged as MLflow "models from code" (``save_model(python_model=<this file>)``): MLflow
stores this file's source with the model, not a pickled object, and runs it when the model
is loaded. The model itself is the workbench bundle logged as the artifact ``bundle``;
loading it needs the ``workbench`` package importable. Nothing here runs on import of
``workbench.models``: only :mod:`workbench.models.registry` points MLflow at this file.
"""

from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import pandas as pd


class WorkbenchModel(mlflow.pyfunc.PythonModel):
    """Scores a frame of feature columns: calibrated probability or predicted uplift."""

    def load_context(self, context) -> None:  # noqa: ANN001
        from workbench.models.registry import _load_bundle

        self.model = _load_bundle(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001, ANN201
        return self.model.predict(model_input)


mlflow.models.set_model(WorkbenchModel())
