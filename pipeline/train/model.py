"""The LeNet-5 builder: one variant spec in, one uncompiled Keras model out.

In: a ``VariantSpec`` (where batch norm and dropout go, whether conv1/conv2 have biases).
Out: ``build_lenet(spec)`` returns a ``keras.Model``. It loads no data and talks to no
tracker, so tests can check its layers directly.

Layer names are stable and say where a layer sits: ``conv1``, ``conv1_dropout``,
``conv1_bn``, ``conv1_tanh``, ``pool1`` … ``fc1_tanh``, ``output``; on the input
``input_dropout`` and ``input_bn``. BN artifacts and diagnostics use these names.
"""

from __future__ import annotations

import keras
from keras import layers

from pipeline.core.params import VariantSpec

INPUT_SHAPE = (28, 28, 1)
N_CLASSES = 10


def _regularize(x, where: str, dropout: float, batch_norm: bool):
    """Dropout, then batch norm, as the notebook orders them."""
    if dropout > 0:
        x = layers.Dropout(dropout, name=f"{where}_dropout")(x)
    if batch_norm:
        x = layers.BatchNormalization(name=f"{where}_bn")(x)
    return x


def _block(x, spec: VariantSpec, where: str, core: layers.Layer):
    x = core(x)
    x = _regularize(x, where, spec.dropout_hidden, spec.bn_hidden)
    return layers.Activation("tanh", name=f"{where}_tanh")(x)


def build_lenet(spec: VariantSpec) -> keras.Model:
    inputs = keras.Input(shape=INPUT_SHAPE, name="image")
    x = _regularize(inputs, "input", spec.dropout_input, spec.bn_input)
    x = _block(x, spec, "conv1", layers.Conv2D(6, 5, padding="same", use_bias=spec.conv_bias, name="conv1"))
    x = layers.AveragePooling2D(2, strides=1, name="pool1")(x)
    x = _block(x, spec, "conv2", layers.Conv2D(16, 5, padding="valid", use_bias=spec.conv_bias, name="conv2"))
    x = layers.AveragePooling2D(2, strides=2, name="pool2")(x)
    x = _block(x, spec, "conv3", layers.Conv2D(120, 5, padding="valid", name="conv3"))
    x = layers.Flatten(name="flatten")(x)
    x = _block(x, spec, "fc1", layers.Dense(84, name="fc1"))
    if spec.dropout_output > 0:
        x = layers.Dropout(spec.dropout_output, name="fc1_out_dropout")(x)
    outputs = layers.Dense(N_CLASSES, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name=f"lenet5_{spec.name}")


def bn_layers(model: keras.Model) -> list[layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]


def bn_site(layer_name: str) -> str:
    """``conv1_bn`` -> ``conv1``: the place in the network a BN layer normalizes."""
    return layer_name.removesuffix("_bn")


def parameter_counts(model: keras.Model) -> dict[str, int]:
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}
