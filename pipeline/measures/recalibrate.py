"""Batch norm re-estimated with dropout off (Li, Chen, Hu & Yang, CVPR 2019, sec. 5): the causal
check of the variance shift. No retraining: only the BN layers' moving statistics change.

In: a trained Keras model with BN layers, and images the model was trained on (values as it is fed).
Out: ``recalibrated(model, x)`` returns a *copy* of the model (the trained one is untouched, so
the logged model and every other measurement see the weights training produced) whose BN moving
mean and variance are the exact statistics of each BN layer's input on ``x`` in inference mode,
i.e. with dropout off. Layers are re-estimated in network order, each after the ones before it,
so a layer sees the inputs the re-estimated layers before it produce.
"""

from __future__ import annotations

import keras
import numpy as np

from pipeline.measures.variance_shift import merge_moments


def recalibrated(model: keras.Model, x, batch_size: int = 500) -> keras.Model:
    """A copy of ``model`` whose BN layers' moving statistics are re-estimated on ``x`` with dropout off."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        # Only this layer's input, computed only as far as this layer: the same eager ops on the same
        # batches as a probe of every point, so the same numbers, at a fraction of the cost.
        probe = keras.Model(copy.input, layer.input)
        state = None
        for start in range(0, len(x), batch_size):
            state = merge_moments(state, keras.ops.convert_to_numpy(probe(x[start:start + batch_size], training=False)))
        n, mean, m2 = state
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign((m2 / n).astype(np.float32))
    return copy
