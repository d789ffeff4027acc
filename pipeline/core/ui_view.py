"""How the study looks in ``mlflow ui``: the experiment's kind, description and saved runs-table view.

In: nothing but the metric names. Out: ``experiment_tags()`` (what ``pipeline.core.tracking``
sets on the study's experiment) and ``ui_url(base, experiment_id)``, the page ``make ui`` prints.
"""

from __future__ import annotations

from pipeline.core import metric_names

# The UI (MLflow 3) opens an experiment in its model-training mode with this kind, and offers
# the runs-table view stored in the tag SHARED_VIEW_PREFIX + key as ?viewStateShareKey=key.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DESCRIPTION_TAG = "mlflow.note.content"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
STUDY_VIEW = "study"


def study_view() -> dict:
    """The runs table a user of the study wants first: variant, seed, the final test accuracy and
    loss, the logged model; best test accuracy on top."""
    def metric(name: str) -> str:
        return f"metrics.`{name}`"

    return {
        "searchFilter": "", "orderByKey": metric(metric_names.TEST_ACCURACY), "orderByAsc": False,
        "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        "selectedColumns": ["tags.`variant`", "tags.`seed`", metric(metric_names.TEST_ACCURACY),
                            metric(metric_names.TEST_LOSS)],
    }


DESCRIPTION = f"""LeNet-5 on MNIST: batch norm and dropout variants, one run per (variant, seed).

- Runs table: open the **study** view (`make ui` prints its address, `?viewStateShareKey={STUDY_VIEW}`) for
  variant, seed, final test accuracy and loss, best first. The `comparison` run holds the report.
- A run's *Model metrics*: `by_epoch` first (x axis "Step" = epoch; the latest point is the final value),
  then `diagnostics/*` (Step = optimizer step) and `timing`.
- Models: `lenet5-<variant>-s<seed>`, each with its final metrics and datasets; also versions of the
  registered model named like this experiment, alias `<variant>-s<seed>`.
"""


def experiment_tags() -> dict[str, str]:
    import json

    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], SHARED_VIEW_PREFIX + STUDY_VIEW: json.dumps(study_view())}


def ui_url(base: str, experiment_id: str) -> str:
    """The study's runs table in the model-training mode of ``mlflow ui`` at ``base``."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={STUDY_VIEW}")
