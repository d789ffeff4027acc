"""The Keras side of the diagnostics: a callback that measures during ``fit``, and the
measurements that need a model (co-adaptation of one layer, BN variance ratios).

In: a Keras model being fitted (or trained) and a fixed batch of inputs (e.g. 256 test
images, values as the model is fed). Everything runs the model in inference mode
(``training=False``: dropout off, batch norm on its moving statistics).
Out: ``CovariateShiftMonitor`` records (see its docstring); ``coadaptation(model, x)`` and
``variance_ratios(model, x)`` return floats / per-channel arrays. The math on the arrays is in
the pure modules ``covariate_shift``, ``coadaptation`` and ``variance_shift``.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np

from pipeline.measures.checkpoints import StepCheckpoints
from pipeline.measures.coadaptation import mean_abs_correlation
from pipeline.measures.covariate_shift import probe_stats, unit_stats
from pipeline.measures.probes import output_key, probe_activations
from pipeline.measures.variance_shift import Moments, merge_moments


class CovariateShiftMonitor(StepCheckpoints):
    """Watches the distribution of every probe point on a fixed batch during ``fit``.

    Records are taken at the checkpoints of ``pipeline.measures.checkpoints.StepCheckpoints``: before
    the first update (step 0), then every ``every_n_batches`` updates, and at ``finish()``.
    Each record is ``on_record(step, {f"{point}.{stat}": float}, coadaptation)`` with stat
    in ``PROBE_STATS``; it is also appended to ``self.history`` as ``(step, dict)``.

    With ``coadaptation_layer`` (e.g. ``"fc1_tanh"``) the same probe pass also yields
    that layer's output, and ``coadaptation`` is its ``mean_abs_correlation`` (kept in
    ``self.coadaptation_history`` as ``(step, value)``); otherwise it is None. With
    ``covariate_shift=False`` only that layer is computed and the records are empty dicts.
    """

    def __init__(self, probe_x, every_n_batches: int,
                 on_record: Callable[[int, dict, float | None], None] | None = None,
                 coadaptation_layer: str | None = None, covariate_shift: bool = True):
        super().__init__(every_n_batches)
        if not covariate_shift and not coadaptation_layer:
            raise ValueError("nothing to record: covariate_shift is off and no coadaptation_layer is given")
        self.covariate_shift = covariate_shift
        self.probe_x = probe_x
        self.on_record = on_record
        self.coadaptation_layer = coadaptation_layer
        self.history: list[tuple[int, dict[str, float]]] = []
        self.coadaptation_history: list[tuple[int, float]] = []
        self.last_output: np.ndarray | None = None  # the co-adaptation layer's output at the last record

    def record(self, step: int) -> dict[str, float]:
        layer = self.coadaptation_layer
        acts = probe_activations(self.model, self.probe_x, outputs=(layer,) if layer else (),
                                 inputs=self.covariate_shift)
        out = acts.pop(output_key(layer)) if layer else None
        stats = {**probe_stats(acts), **unit_stats(acts)}
        coad = mean_abs_correlation(out.reshape(len(out), -1)) if layer else None
        self.history.append((step, stats))
        if layer:
            self.coadaptation_history.append((step, coad))
            self.last_output = out
        if self.on_record is not None:
            self.on_record(step, stats, coad)
        return stats


def coadaptation(model: keras.Model, x, layer: str = "fc1_tanh") -> float:
    """``mean_abs_correlation`` of the output of ``layer`` (default: the 84 fc1 units after
    tanh) on ``x``, in inference mode."""
    acts = probe_activations(model, x, outputs=[layer], inputs=False)[output_key(layer)]
    return mean_abs_correlation(acts.reshape(len(acts), -1))


def variance_ratios(model: keras.Model, x, batch_size: int = 250) -> dict[str, np.ndarray]:
    """Per BN layer, per channel: ``(Var_inference + eps) / (moving_variance + eps)``.

    ``Var_inference`` is the variance of the layer's input on ``x`` in inference mode
    (dropout off), over every axis but the last (batch and, for conv layers, spatial
    positions); ``eps`` is the layer's epsilon, as BN itself divides by
    ``sqrt(moving_variance + eps)``. So a ratio is the variance of the normalized
    output at inference: 1 when training and inference statistics agree, < 1 when
    dropout before BN inflated the training variance.
    """
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # Batch by batch: the activations of 2,000 images at once would cost about 1 GiB of memory.
    merged: dict[str, Moments] = {}
    for start in range(0, len(x), batch_size):
        acts = probe_activations(model, x[start:start + batch_size])
        for layer in bn:
            merged[layer.name] = merge_moments(merged.get(layer.name), acts[layer.name])
    ratios = {}
    for layer in bn:
        n, _, m2 = merged[layer.name]
        moving = keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64)
        ratios[layer.name] = (m2 / n + layer.epsilon) / (moving + layer.epsilon)
    return ratios
