"""Keras callbacks of the training stage.

In: a model being fitted (Keras calls these), plus what each needs to do its job.
Out: ``EpochLogger`` evaluates on the test images after every epoch, appends a row to
a history list, logs it to the active MLflow run (step = epoch, names from
``metric_names.EPOCH``) and prints a progress line; ``DivergenceGuard`` stops a training whose
loss diverged; ``SignalGuard`` re-raises, at the next batch, an interrupt Python swallowed.
"""

from __future__ import annotations

import math

import keras

from pipeline.core import cli
from pipeline.core.metric_names import EPOCH, VALIDATION

METRIC_KEYS = tuple(EPOCH)  # history columns: train_loss, train_accuracy, test_loss, test_accuracy


class EpochLogger(keras.callbacks.Callback):
    """Test metrics (and validation metrics, given validation batches) after every epoch, logged
    with step = epoch (1-based)."""

    def __init__(self, test_batches, history: list[dict], validation_batches=None):
        super().__init__()
        self.test_batches = test_batches
        self.validation_batches = validation_batches
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        logs = logs or {}
        test_loss, test_acc = self.model.evaluate(self.test_batches, verbose=0)
        row = {"epoch": epoch + 1, "train_loss": float(logs["loss"]), "train_accuracy": float(logs["accuracy"]),
               "test_loss": float(test_loss), "test_accuracy": float(test_acc)}
        names = {k: EPOCH[k] for k in METRIC_KEYS}
        validation = ""
        if self.validation_batches is not None:
            val_loss, val_acc = self.model.evaluate(self.validation_batches, verbose=0)
            row.update(validation_loss=float(val_loss), validation_accuracy=float(val_acc))
            names.update(VALIDATION)
            validation = f" | validation loss {row['validation_loss']:.4f} acc {row['validation_accuracy']:.4f}"
        self.history.append(row)
        mlflow.log_metrics({name: row[k] for k, name in names.items()}, step=row["epoch"])
        print(f"epoch {row['epoch']}/{self.params['epochs']}: loss {row['train_loss']:.4f} "
              f"acc {row['train_accuracy']:.4f} | test loss {row['test_loss']:.4f} "
              f"acc {row['test_accuracy']:.4f}{validation}", flush=True)


# A training has diverged when its loss turns NaN or infinite (checked every step), or when an
# epoch's mean training loss is above twice the loss of a uniform guess over the 10 digits
# (2 ln 10 = 4.6; checked at the end of each epoch, so a brief spike that training recovers from
# does not count). A tanh LeNet at too high a rate rarely reaches NaN: its loss stays finite, and
# how high it goes depends on the backend (TensorFlow computes it from the logits, unbounded:
# 53 after one epoch at rate 1,000 on 2,500 images; JAX from clipped probabilities, at most
# -ln 1e-7 = 16.1: 13.9 there). A network still learning slowly sits near ln 10 = 2.3.
DIVERGED_LOSS = 2 * math.log(10)


class DivergenceGuard(keras.callbacks.Callback):
    """Stops a training whose loss diverged (see ``DIVERGED_LOSS``); ``diverged_at_step``
    (1-based optimizer step: the step itself for NaN or infinity, the epoch's last step for a
    mean loss too high) says where. The epoch still ends, so the history shows the diverged state.

    Safe for Keras' asynchronous batch callbacks (it only reads the loss and sets a flag), so
    alone it does not make a JAX training wait for every step; the step is computed from the
    epoch and batch index, not counted, so the order the calls arrive in does not matter.
    """

    async_safe = True

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.diverged_at_step: int | None = None

    def _diverged(self, step: int) -> None:
        self.diverged_at_step = step if self.diverged_at_step is None else min(step, self.diverged_at_step)
        self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._diverged(self.epoch * int(self.params.get("steps") or 0) + batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and self.diverged_at_step is None and not float(loss) <= DIVERGED_LOSS:
            self._diverged((epoch + 1) * int(self.params.get("steps") or 0))


class SignalGuard(keras.callbacks.Callback):
    """Raises, at the next batch, an interrupt Python swallowed (see cli.pending_signals)."""

    def on_train_batch_begin(self, batch, logs=None):
        cli.raise_pending_signal()
