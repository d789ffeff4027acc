"""The MLflow metric names of a training run, in one place: the training logs them, the report
and the tests read them back.

MLflow's run page groups a run's charts into sections named by the part of the metric name
before its last ``/``, orders the sections alphabetically (names without a ``/`` come last, as
"Model metrics") and the charts in a section alphabetically. So the answer comes first:

- ``by_epoch/{test,train}_{accuracy,loss}``: one point per epoch (step = epoch, 1-based); the
  latest point, which is what the runs table shows, is the final one (test accuracy first);
  a learning-rate grid training adds ``by_epoch/validation_{accuracy,loss}``;
- ``convergence/test_accuracy``: accuracy on ``convergence.images`` randomly drawn test images, step =
  optimizer step (every ``convergence.every_steps``, from 0 to the end of training);
- ``diagnostics/coadaptation/fc1``, ``diagnostics/covariate_shift/<point>/<stat>`` (step =
  optimizer step; the latest point is the end of training) and
  ``diagnostics/variance_shift/<bn layer>`` (once, at the end);
- ``timing/*``: seconds and throughput of this training on this machine (and, for a training
  whose loss diverged, the optimizer step where it stopped).

One name per quantity: the final value of a series is its latest point, never a second metric.
The DVC record (``metrics.json``, ``history.csv``) and ``TrainResult.metrics`` keep the short
names (the keys of ``EPOCH`` and ``train_seconds`` …); only MLflow sees these.
"""

from __future__ import annotations

EPOCH_GROUP = "by_epoch"
TEST_ACCURACY = f"{EPOCH_GROUP}/test_accuracy"
TEST_LOSS = f"{EPOCH_GROUP}/test_loss"
TRAIN_ACCURACY = f"{EPOCH_GROUP}/train_accuracy"
TRAIN_LOSS = f"{EPOCH_GROUP}/train_loss"
# history.csv column (and TrainResult/record key) -> MLflow metric name, in history.csv's order.
EPOCH = {"train_loss": TRAIN_LOSS, "train_accuracy": TRAIN_ACCURACY, "test_loss": TEST_LOSS,
         "test_accuracy": TEST_ACCURACY}

# A learning-rate grid training also measures its validation images (carved from the training
# images) every epoch; the report chooses each variant's best rate on these, never on the test set.
VALIDATION_ACCURACY = f"{EPOCH_GROUP}/validation_accuracy"
VALIDATION_LOSS = f"{EPOCH_GROUP}/validation_loss"
VALIDATION = {"validation_loss": VALIDATION_LOSS, "validation_accuracy": VALIDATION_ACCURACY}

TRAIN_SECONDS = "timing/train_seconds"
IMAGES_PER_SECOND = "timing/images_per_second"
DIAGNOSTICS_FINAL_SECONDS = "timing/diagnostics_final_seconds"
CONVERGENCE_SECONDS = "timing/convergence_seconds"
TIMING = {"train_seconds": TRAIN_SECONDS, "images_per_second": IMAGES_PER_SECOND,
          "convergence_seconds": CONVERGENCE_SECONDS}

CONVERGENCE_ACCURACY = "convergence/test_accuracy"

# Tags of a training run besides variant and seed.
TAG_LEARNING_RATE = "learning_rate"
TAG_LR_GRID = "lr_grid"          # "true" on a learning-rate grid training
# Which part of the study a training run belongs to: the study's matrix at params.yaml's rate, the grid, or a
# confirmation at the variant's tuned rate.
TAG_PART = "part"
PART_STUDY, PART_LR_GRID, PART_CONFIRM = "study", "lr_grid", "confirm"
TAG_DIVERGED = "diverged"        # "true" when the training loss diverged (pipeline.train.callbacks.DIVERGED_LOSS)
DIVERGED_AT_STEP = "timing/diverged_at_step"

DIAGNOSTICS_GROUP = "diagnostics"
COADAPTATION_FC1 = f"{DIAGNOSTICS_GROUP}/coadaptation/fc1"
# After batch norm's moving statistics were re-estimated with dropout off (pipeline.measures.recalibrate).
RECALIBRATED = f"{DIAGNOSTICS_GROUP}/recalibrated"
RECALIBRATED_TEST_ACCURACY = f"{RECALIBRATED}/test_accuracy"
RECALIBRATED_TEST_LOSS = f"{RECALIBRATED}/test_loss"
RECALIBRATED_COADAPTATION_FC1 = f"{RECALIBRATED}/coadaptation/fc1"


def covariate_shift(record_key: str) -> str:
    """``conv1_tanh.p50`` (a column of diagnostics/history.csv) -> its metric name."""
    point, stat = record_key.rsplit(".", 1)
    return f"{DIAGNOSTICS_GROUP}/covariate_shift/{point}/{stat}"


def variance_shift(layer: str) -> str:
    return f"{DIAGNOSTICS_GROUP}/variance_shift/{layer}"
