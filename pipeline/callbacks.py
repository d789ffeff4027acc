"""Keras callbacks of the training stage.

In: a model being fitted (Keras calls these), plus what each needs to do its job.
Out: ``EpochLogger`` evaluates on the test images after every epoch, appends a row to
a history list, logs it to the active MLflow run (step = epoch, names from
``metric_names.EPOCH``) and prints a progress line; ``SignalGuard`` re-raises, at the next batch, an interrupt Python swallowed.
"""

from __future__ import annotations

import keras

from pipeline import cli
from pipeline.metric_names import EPOCH

METRIC_KEYS = tuple(EPOCH)  # history columns: train_loss, train_accuracy, test_loss, test_accuracy


class EpochLogger(keras.callbacks.Callback):
    """Test metrics after every epoch, logged with step = epoch (1-based)."""

    def __init__(self, test_batches, history: list[dict]):
        super().__init__()
        self.test_batches = test_batches
        self.history = history

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        logs = logs or {}
        test_loss, test_acc = self.model.evaluate(self.test_batches, verbose=0)
        row = {"epoch": epoch + 1, "train_loss": float(logs["loss"]), "train_accuracy": float(logs["accuracy"]),
               "test_loss": float(test_loss), "test_accuracy": float(test_acc)}
        self.history.append(row)
        mlflow.log_metrics({EPOCH[k]: row[k] for k in METRIC_KEYS}, step=row["epoch"])
        print(f"epoch {row['epoch']}/{self.params['epochs']}: loss {row['train_loss']:.4f} "
              f"acc {row['train_accuracy']:.4f} | test loss {row['test_loss']:.4f} "
              f"acc {row['test_accuracy']:.4f}", flush=True)


class SignalGuard(keras.callbacks.Callback):
    """Raises, at the next batch, an interrupt Python swallowed (see cli.pending_signals)."""

    def on_train_batch_begin(self, batch, logs=None):
        cli.raise_pending_signal()
