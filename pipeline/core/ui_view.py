"""How the study looks in ``mlflow ui``: the experiment's kind, description and saved runs-table view.

In: the metric names and the study's variants. Out: ``experiment_tags(variants)`` (what ``pipeline.core.tracking``
sets on the study's experiment) and ``ui_url(base, experiment_id)``, the page ``make ui`` prints.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core import metric_names

# The UI (MLflow 3) opens an experiment in its model-training mode with this kind, and offers
# the runs-table view stored in the tag SHARED_VIEW_PREFIX + key as ?viewStateShareKey=key.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DESCRIPTION_TAG = "mlflow.note.content"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
STUDY_VIEW = "study"


# MLflow 3's run grouping: one row per variant, its metrics aggregated over the variant's runs (seeds).
GROUP_BY = {"aggregateFunction": "average", "groupByKeys": [{"mode": "tag", "groupByData": "variant"}]}


def study_view(variants: Sequence[str] = ()) -> dict:
    """The runs table a user of the study wants first: one row per variant (grouped by its ``variant``
    tag: each metric the mean over its seeds, the seeds' runs inside), with the final test accuracy
    and loss; best test accuracy on top."""
    def metric(name: str) -> str:
        return f"metrics.`{name}`"

    return {
        "searchFilter": f"tags.`{metric_names.TAG_PART}` = '{metric_names.PART_STUDY}'", "orderByKey": metric(metric_names.TEST_ACCURACY), "orderByAsc": False,
        "startTime": "ALL", "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
        "selectedColumns": ["tags.`variant`", "tags.`seed`", metric(metric_names.TEST_ACCURACY),
                            metric(metric_names.TEST_LOSS)],
        "groupBy": GROUP_BY,
        # a group's id is "<mode>.<key>.<value>"; closed, each variant is one row until opened
        "groupsExpanded": {f"tag.variant.{variant}": False for variant in variants},
    }


DESCRIPTION = f"""LeNet-5 on MNIST: batch norm and dropout variants, one run per (variant, seed).

- Runs table: open the **study** view (`make ui` prints its address, `?viewStateShareKey={STUDY_VIEW}`):
  the study's runs (tag `part` = `study`), one row per variant with its final test accuracy and loss
  averaged over the seeds (the grouping menu also offers min and max; open a group for its seeds' runs).
  Clear the filter for the rest: the learning-rate grid (`part` = `lr_grid`) and the `comparison` run,
  which holds the report.
- A run's *Model metrics*: `by_epoch` first (x axis "Step" = epoch; the latest point is the final value),
  then `diagnostics/*` (Step = optimizer step) and `timing`.
- Models: `lenet5-<variant>-s<seed>`, each with its final metrics and datasets; also versions of the
  registered model named like this experiment, alias `<variant>-s<seed>`.
"""


def experiment_tags(variants: Sequence[str] = ()) -> dict[str, str]:
    import json

    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], SHARED_VIEW_PREFIX + STUDY_VIEW: json.dumps(study_view(variants))}


def tags_to_update(existing: dict[str, str], variants: Sequence[str]) -> dict[str, str]:
    """The tags an existing experiment lacks or has in an older form. A description someone wrote stays;
    a caller that does not know the variants (``()``) leaves the saved view a training wrote."""
    wanted = experiment_tags(variants)
    if DESCRIPTION_TAG not in existing:
        wanted[DESCRIPTION_TAG] = DESCRIPTION
    if not variants:
        wanted = {k: v for k, v in wanted.items() if not (k.startswith(SHARED_VIEW_PREFIX) and k in existing)}
    return {k: v for k, v in wanted.items() if existing.get(k) != v}


def ui_url(base: str, experiment_id: str) -> str:
    """The study's runs table in the model-training mode of ``mlflow ui`` at ``base``."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={STUDY_VIEW}")
