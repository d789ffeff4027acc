"""Checkpoints every K optimizer steps during ``fit``, the clock the step-wise measurements share.

In: ``every`` (K, in optimizer updates) and a model being fitted (Keras calls the hooks).
Out: ``StepCheckpoints`` calls its ``record(step)`` before the first update (step 0) and then
every ``every`` updates, counted across epochs (and across repeated ``fit`` calls with the same
callback); ``finish()`` records the end of training too, unless it was just recorded. With
``steps_per_execution`` > 1 a record is taken at the first step on or past each multiple.

Only the *start* of a batch and the end of an epoch are hooked: a hook at the end of every
batch would make Keras convert each step's logs to Python numbers, a device sync per step that
slows training by several percent.
"""

from __future__ import annotations

import keras


class StepCheckpoints(keras.callbacks.Callback):
    """Subclasses implement ``record(step)``; ``steps_done`` counts the updates of finished epochs."""

    def __init__(self, every: int):
        super().__init__()
        if every < 1:
            raise ValueError(f"a checkpoint interval must be >= 1 step, got {every}")
        self.every = int(every)
        self.last_recorded = -1
        self.steps_done = 0  # optimizer updates done by the end of the last finished epoch
        self._epoch_base = 0  # updates done before the current epoch
        self._epoch_last = -1  # index of the last batch begun in this epoch
        self._next = 0  # next step at which to record

    def record(self, step: int):
        raise NotImplementedError

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_base = self.steps_done
        self._epoch_last = -1

    def on_train_batch_begin(self, batch, logs=None):
        self._epoch_last = batch
        step = self._epoch_base + batch
        if step >= self._next:
            self._record(step)
            self._next = (step // self.every + 1) * self.every

    def on_epoch_end(self, epoch, logs=None):
        steps = (self.params or {}).get("steps")
        if not steps:  # an input of unknown length: the last batch begun, and one execution
            spe = int(getattr(self.model, "steps_per_execution", 1) or 1)
            steps = self._epoch_last + spe if self._epoch_last >= 0 else 0
        self.steps_done = self._epoch_base + int(steps)

    def finish(self) -> None:
        """The end of training is a checkpoint too."""
        if self.last_recorded < self.steps_done:
            self._record(self.steps_done)

    def _record(self, step: int) -> None:
        self.record(step)
        self.last_recorded = step
