"""Convergence speed during training (Ioffe & Szegedy 2015, Fig. 1a): held-out accuracy every K steps.

In: the ``convergence`` settings, the model being fitted and the held-out images with their
labels (the training stage passes ``convergence.images`` test images drawn by ``held_out``: a seeded
random subset, the same for every run, in test-set order; the first N would be a harder-than-average
slice of MNIST's test set).
Out: ``ConvergenceMonitor``, a ``fit`` callback that measures the model's accuracy on those
images in inference mode (dropout off, batch norm on its moving statistics) before the first
update (step 0), every ``every_steps`` optimizer updates and at ``finish()``; each point goes to
``on_record(step, accuracy)`` and into ``curve`` as ``{"step", "test_accuracy"}``; ``seconds`` is
the time the measurements took, so their share of the training is known for every run.
Measuring reads the weights and changes nothing in the training.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from pipeline.measures.checkpoints import StepCheckpoints


SUBSET_SEED = 0  # the held-out subset's own random stream: it never touches training's


def held_out(n_test: int, n: int) -> np.ndarray:
    """Indices of ``n`` of the ``n_test`` test images, drawn once by ``SUBSET_SEED`` and sorted; all when n >= n_test."""
    if n >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(SUBSET_SEED).choice(n_test, size=n, replace=False))


class ConvergenceMonitor(StepCheckpoints):
    def __init__(self, x: np.ndarray, y: np.ndarray, every_steps: int,
                 on_record: Callable[[int, float], None] | None = None):
        super().__init__(every_steps)
        if len(x) != len(y) or not len(x):
            raise ValueError(f"need as many labels as images, and some: {len(x)} images, {len(y)} labels")
        self.x = x
        self.y = np.asarray(y)
        self.on_record = on_record
        self.curve: list[dict] = []
        self.seconds = 0.0
        self._predict_fn = None

    def _predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities in inference mode, through a function compiled once."""
        import keras

        model = self.model
        if keras.backend.backend() != "jax":
            return np.asarray(model.predict_on_batch(x))
        # Keras' JAX predict_on_batch recompiles on every call during fit (seconds each); a
        # jitted stateless call of the model, compiled once, takes milliseconds.
        import jax

        if self._predict_fn is None:
            self._predict_fn = jax.jit(lambda trainable, non_trainable, images: model.stateless_call(
                trainable, non_trainable, images, training=False)[0])
        return np.asarray(self._predict_fn([v.value for v in model.trainable_variables],
                                           [v.value for v in model.non_trainable_variables], x))

    def record(self, step: int) -> float:
        start = time.perf_counter()
        probs = self._predict(self.x)
        accuracy = float(np.mean(probs.argmax(axis=1) == self.y))
        self.curve.append({"step": int(step), "test_accuracy": accuracy})
        if self.on_record is not None:
            self.on_record(step, accuracy)
        self.seconds += time.perf_counter() - start
        return accuracy
