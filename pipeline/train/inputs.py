"""The training stage's input side: prepared arrays in, batches for ``fit`` out.

In: ``data/prepared/{x,y}_{train,test}.npy`` (made by the download and normalize stages,
or by ``python -m pipeline.data`` for ``mlflow run``) and the ``train`` settings (limits, batch size, shuffle).
Out: ``load_data`` returns the (possibly limited) arrays; ``carve_validation`` moves a seeded
validation split out of the training images (learning-rate grid trainings); ``batches`` and ``fit_inputs``
feed them to Keras with a seeded order, each image once per epoch: a ``tf.data`` pipeline
on TensorFlow, ``pipeline.train.seeded_batches.SeededBatches`` on any other backend, so
JAX trains without TensorFlow installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import TrainSettings
from pipeline.data.prepared import load_prepared

log = logging.getLogger("pipeline.train.inputs")

def load_data(settings: TrainSettings, prepared: Path = paths.PREPARED) -> dict[str, np.ndarray]:
    """The prepared arrays, cut to ``train_limit``/``test_limit``; labels as int64."""
    arrays = load_prepared(prepared)
    out = {}
    for split, limit in (("train", settings.train_limit), ("test", settings.test_limit)):
        n = len(arrays[f"y_{split}"]) if limit is None else min(limit, len(arrays[f"y_{split}"]))
        out[f"x_{split}"] = np.ascontiguousarray(arrays[f"x_{split}"][:n])
        out[f"y_{split}"] = np.ascontiguousarray(arrays[f"y_{split}"][:n]).astype(np.int64)
    return out


def carve_validation(data: dict[str, np.ndarray], images: int, seed: int) -> dict[str, np.ndarray]:
    """``data`` with ``images`` of its training images moved to ``x_val``/``y_val``.

    Which images is fixed by the seed alone (a NumPy ``default_rng(seed)`` permutation of the
    training indices), so every variant and learning rate at one seed shares one split; both
    parts keep the prepared order. The test images are untouched.
    """
    n = len(data["y_train"])
    if not 0 < images < n:
        raise UserError(f"params: 'lr_grid.validation_images' = {images} is invalid: must be from 1 to {n - 1} "
                        f"(the grid trains on the other images of the {n} training images)")
    held_out = np.zeros(n, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(n)[:images]] = True
    out = dict(data)
    out["x_val"], out["y_val"] = (np.ascontiguousarray(data[k][held_out]) for k in ("x_train", "y_train"))
    out["x_train"], out["y_train"] = (np.ascontiguousarray(data[k][~held_out]) for k in ("x_train", "y_train"))
    return out


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """``(x, y)`` in batches for ``fit`` and ``evaluate`` on the backend Keras runs on."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return tf_batches(x, y, batch_size, shuffle=shuffle, seed=seed)
    from pipeline.train.seeded_batches import SeededBatches

    return SeededBatches(x, y, batch_size, shuffle=shuffle, seed=seed)


def tf_batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """``(x, y)`` as a ``tf.data`` pipeline of batches: the input side on TensorFlow.

    It does what Keras does with NumPy arrays (a new permutation of the indices every
    epoch, one gather per batch, one batch prefetched), with one difference: tf.data's
    autotuner is off, so the input side never sizes itself up against training on a small
    machine. On 2 cores, Keras' autotuned pipeline ran some whole epochs at about 55% speed
    (2,900 instead of 5,100 images/s for ``bn_hidden``: 5 of 12 epochs in a probe, 0 of 12
    with the autotuner off) and its first epoch is slower; see ``reports/benchmark.md``.
    Shuffling is seeded: the same seed gives the same order, and every epoch a new one.
    """
    import tensorflow as tf

    n = len(x)
    xs, ys = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    order = tf.data.Dataset.range(n)
    if shuffle:
        order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    ds = order.batch(batch_size).map(lambda i: (tf.gather(xs, i), tf.gather(ys, i))).prefetch(1)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = True
    return ds.with_options(options)


def fit_inputs(x: np.ndarray, y: np.ndarray, settings: TrainSettings, seed: int, mode: str = "batches") -> dict:
    """Keyword arguments for ``model.fit`` that feed the training data.

    ``batches`` (the pipeline's): ``batches`` above, shuffled with the seed. ``arrays``: the
    NumPy arrays straight into ``fit``, Keras' own autotuned input side (the benchmark's
    comparison).
    """
    if mode == "arrays":
        return {"x": x, "y": y, "batch_size": settings.batch_size, "shuffle": settings.shuffle}
    return {"x": batches(x, y, settings.batch_size, shuffle=settings.shuffle, seed=seed), "shuffle": False}
