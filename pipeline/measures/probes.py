"""Probe points: sub-models that read a model's internal layers.

In: a Keras model (a ``build_lenet`` model or any Functional model) and a batch of inputs
(values as the model is fed).
Out: ``probe_activations`` returns the input of every probe point (each ``*_tanh`` and BN
layer) and/or the output of named layers, as NumPy arrays, computed in inference mode
(``training=False``: dropout off, batch norm on its moving statistics).

Sub-models are built once per model and cached (weakly: they go when the model goes), so
one pass yields both the probe points and the co-adaptation layer's output.
"""

from __future__ import annotations

import weakref
from typing import Callable, Sequence

import keras
import numpy as np
from keras import layers

_submodels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe_points(model: keras.Model) -> list[str]:
    """Names of the layers whose *input* is watched: every ``*_tanh`` and every BN layer,
    in network order. In a ``bn_dropout`` LeNet: input_bn, conv1_bn, conv1_tanh, … fc1_tanh."""
    return [
        layer.name
        for layer in model.layers
        if isinstance(layer, layers.BatchNormalization) or layer.name.endswith("_tanh")
    ]


def output_key(layer: str) -> str:
    """The key under which ``probe_activations(..., outputs=[layer])`` returns ``layer``'s output."""
    return f"{layer}:output"


def make_probe_model(model: keras.Model, outputs: Sequence[str] = (), inputs: bool = True) -> keras.Model:
    """A model from ``model.input`` to a dict ``{point: input of that layer}`` (with
    ``inputs``), plus ``{output_key(layer): output of that layer}`` for each layer named
    in ``outputs``.

    It shares weights with ``model``, so it always sees the current weights. Call it
    with ``training=False``; ``probe_activations`` does so and caches the probe model.
    """
    tensors = {name: model.get_layer(name).input for name in probe_points(model)} if inputs else {}
    tensors.update({output_key(name): model.get_layer(name).output for name in outputs})
    return keras.Model(model.input, tensors, name=f"{model.name}_probe")


def _cached(model: keras.Model, key: str, build: Callable[[], keras.Model]) -> keras.Model:
    per_model = _submodels.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def probe_activations(model: keras.Model, x, outputs: Sequence[str] = (), inputs: bool = True
                      ) -> dict[str, np.ndarray]:
    """The input of every probe point on ``x`` (unless ``inputs`` is False) and the output of
    each layer in ``outputs`` (under ``output_key(layer)``), in inference mode, as NumPy arrays.

    The call is eager: a compiled call (``predict_on_batch``) saves about 10 ms per record
    but its tracing cost more than that over a whole training run here.
    """
    outputs = tuple(outputs)
    key = f"probe:{inputs}:{','.join(outputs)}"
    probe = _cached(model, key, lambda: make_probe_model(model, outputs, inputs))
    return {k: keras.ops.convert_to_numpy(v) for k, v in probe(x, training=False).items()}
