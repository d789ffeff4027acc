"""Training batches without TensorFlow: the input side of ``fit`` on JAX (or any backend).

In: arrays ``x``, ``y``, a batch size, whether to shuffle, and a seed; Keras imported with
its backend already chosen (``pipeline.core.backend.activate``).
Out: ``SeededBatches``, a ``keras.utils.PyDataset`` whose epoch ``e`` visits every image once,
in ``np.random.default_rng([seed, e]).permutation(n)`` order: the order depends only on the
seed and the epoch. Batches are gathered in the training thread, one at a time, while the
device runs the previous step (JAX dispatches asynchronously).
"""

from __future__ import annotations

import keras
import numpy as np


class SeededBatches(keras.utils.PyDataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        super().__init__()
        self.x, self.y, self.batch_size, self.shuffle, self.seed = x, y, batch_size, shuffle, seed
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray | None:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x)) if self.shuffle else None

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self.order is None:
            return self.x[part], self.y[part]
        rows = self.order[part]
        return self.x[rows], self.y[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()
