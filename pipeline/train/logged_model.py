"""The trained Keras model as an MLflow LoggedModel: named, with its final metrics, registered.

In: the trained model, a two-image example with its probabilities (the signature), the run id,
the run's train/test datasets (``mlflow.data`` objects), the model's name, the registered
model's name, an alias and tags.
Out: ``log_model(...)`` logs the model in the active run (pip requirements of the backend it
was trained on), links the last epoch's metrics to it with their datasets, registers it, and
returns the model id.
"""

from __future__ import annotations

import numpy as np

from pipeline.core import backend
from pipeline.core import metric_names
from pipeline.core import tracking

# The logged model's step in the run. Not an epoch nor an optimizer step: MLflow links to a
# model every run metric logged at its step, and diagnostics share the step axis with epochs.
# The model's metrics are linked explicitly instead (``link_final_metrics``).
MODEL_STEP = -1


def log_model(model, x_example: np.ndarray, probs: np.ndarray, run_id: str, datasets: dict, *, name: str,
              registered_name: str | None, alias: str, tags: dict[str, str]) -> str:
    """The Keras model as ``name``, carrying only the final epoch's metrics (each with its
    dataset), registered as a version of ``registered_name`` with ``alias`` (unless that is
    None); returns the model id."""
    import mlflow
    from mlflow.models import infer_signature

    info = mlflow.keras.log_model(
        model, name=name, signature=infer_signature(x_example, probs), step=MODEL_STEP, tags=tags,
        pip_requirements=backend.requirements(),
    )
    link_final_metrics(run_id, info.model_id, datasets)
    if registered_name is not None:
        tracking.register_model(info.model_id, registered_name, alias=alias, tags=tags)
    return info.model_id


def link_final_metrics(run_id: str, model_id: str, datasets: dict) -> None:
    """The last epoch's points of the per-epoch metrics, linked to the model with their dataset.

    The same points (key, value, step, timestamp) as in the run, so its history is unchanged.
    """
    import mlflow

    client = mlflow.MlflowClient()
    for key, name in sorted(metric_names.EPOCH.items()):  # the model page lists them in this order: test first
        last = max(client.get_metric_history(run_id, name), key=lambda m: (m.step, m.timestamp))
        mlflow.log_metrics({name: last.value}, step=last.step, timestamp=last.timestamp, run_id=run_id,
                           model_id=model_id, dataset=datasets[key.split("_")[0]])
