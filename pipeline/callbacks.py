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

from pipeline import cli
from pipeline.metric_names import EPOCH, VALIDATION

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


# A training has diverged when its loss is NaN, infinite, or above ten times the loss of a uniform
# guess over the 10 digits (ln 10 = 2.30): the mean probability it gives the right digit is then
# below e^-23 = 1e-10. A tanh LeNet at too high a rate rarely reaches NaN (its loss, computed from
# the logits, grows without bound instead: 27,712 after one epoch at rate 1,000 on 2,500 images).
DIVERGED_LOSS = 10 * math.log(10)


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first optimizer step whose running loss has diverged
    (``DIVERGED_LOSS``: a learning rate too high); ``diverged_at_step`` (1-based) says where.
    The epoch still ends, so the history shows the diverged state."""

    def __init__(self):
        super().__init__()
        self.step = 0
        self.diverged_at_step: int | None = None

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not float(loss) <= DIVERGED_LOSS:  # NaN compares False
            self.diverged_at_step = self.step
            self.model.stop_training = True


class SignalGuard(keras.callbacks.Callback):
    """Raises, at the next batch, an interrupt Python swallowed (see cli.pending_signals)."""

    def on_train_batch_begin(self, batch, logs=None):
        cli.raise_pending_signal()
