"""Variance shift (Li, Chen, Hu & Yang, CVPR 2019): how far each BN layer's input variance
at inference is from the moving variance it learned in training, which dropout placed
before BN inflates.

In: a Keras model with BatchNormalization layers and a batch of inputs (values as the
model is fed), run in inference mode in batches.
Out: ``variance_ratios``: per BN layer, a per-channel array of ratios;
``shift_from_ratios`` / ``variance_shift``: per BN layer, one float.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from pipeline.probes import probe_activations


def variance_ratios(model: keras.Model, x, batch_size: int = 250) -> dict[str, np.ndarray]:
    """Per BN layer, per channel: ``(Var_inference + eps) / (moving_variance + eps)``.

    ``Var_inference`` is the variance of the layer's input on ``x`` in inference mode
    (dropout off), over every axis but the last (batch and, for conv layers, spatial
    positions); ``eps`` is the layer's epsilon, as BN itself divides by
    ``sqrt(moving_variance + eps)``. So a ratio is the variance of the normalized
    output at inference: 1 when training and inference statistics agree, < 1 when
    dropout before BN inflated the training variance.
    """
    bn = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    # Batch by batch, merging per-channel (n, mean, M2) with Chan et al.'s formula: the
    # activations of 2,000 images at once would cost about 1 GiB of memory.
    merged: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
    for start in range(0, len(x), batch_size):
        acts = probe_activations(model, x[start:start + batch_size])
        for layer in bn:
            a = acts[layer.name].astype(np.float64)
            a = a.reshape(-1, a.shape[-1])
            n_b, mean_b = len(a), a.mean(axis=0)
            m2_b = ((a - mean_b) ** 2).sum(axis=0)
            if layer.name not in merged:
                merged[layer.name] = (n_b, mean_b, m2_b)
                continue
            n_a, mean_a, m2_a = merged[layer.name]
            n = n_a + n_b
            delta = mean_b - mean_a
            merged[layer.name] = (n, mean_a + delta * n_b / n, m2_a + m2_b + delta ** 2 * n_a * n_b / n)
    ratios = {}
    for layer in bn:
        n, _, m2 = merged[layer.name]
        moving = keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64)
        ratios[layer.name] = (m2 / n + layer.epsilon) / (moving + layer.epsilon)
    return ratios


def shift_from_ratios(ratios: dict[str, np.ndarray]) -> dict[str, float]:
    """Per BN layer: the mean over channels of ``max(r, 1/r)``."""
    return {name: float(np.maximum(r, 1.0 / r).mean()) for name, r in ratios.items()}


def variance_shift(model: keras.Model, x) -> dict[str, float]:
    """Per BN layer: the mean over channels of ``max(r, 1/r)``, ``r`` from ``variance_ratios``;
    1.0 means no shift, 2.0 means a factor of two either way. For the worst channel or
    the direction of the shift, use ``variance_ratios``."""
    return shift_from_ratios(variance_ratios(model, x))
