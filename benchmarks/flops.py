"""FLOPs of a LeNet forward pass, counted from the layers of the Keras model.

In: a built Keras model (``pipeline.train.model.build_lenet``). Out: ``layer_flops`` (one row per
layer: output shape, matmul and elementwise FLOPs per image) and ``flops_summary``
(forward, matmul, elementwise and training FLOPs per image, plus those rows).
"""

from __future__ import annotations

import math
from typing import Any

# Rough cost, in FLOPs, of one element of an elementwise layer's output (forward pass).
# Convolutions and dense layers are counted exactly (2 per multiply-add, +1 per bias);
# these are the cheap rest, counted so their share is visible, not to the last FLOP.
ELEMENTWISE_FLOPS = {
    "BatchNormalization": 2,  # (x - mean) * scale + shift, folded into one multiply-add
    "tanh": 1,
    "Dropout": 1,             # one multiply by the (scaled) mask
    "softmax": 3,             # exp, sum, divide
}
TRAIN_FLOPS_FACTOR = 3  # backward ~ 2 x forward (gradients w.r.t. inputs and weights)


def _layer_cost(layer, out_shape: tuple) -> tuple[int, int]:
    """(matmul, elementwise) FLOPs per image of one layer, its activation left out."""
    from keras import layers

    n_out = math.prod(out_shape)
    if isinstance(layer, layers.Conv2D):
        kh, kw = layer.kernel_size
        hout, wout, cout = out_shape
        matmul = 2 * kh * kw * layer.input.shape[-1] * cout * hout * wout // layer.groups
        return matmul, n_out if layer.use_bias else 0
    if isinstance(layer, layers.Dense):
        return 2 * layer.input.shape[-1] * layer.units, layer.units if layer.use_bias else 0
    if isinstance(layer, (layers.AveragePooling2D, layers.MaxPooling2D)):
        ph, pw = layer.pool_size
        return 0, ph * pw * n_out
    if isinstance(layer, layers.BatchNormalization):
        return 0, ELEMENTWISE_FLOPS["BatchNormalization"] * n_out
    if isinstance(layer, layers.Dropout):
        return 0, ELEMENTWISE_FLOPS["Dropout"] * n_out
    if isinstance(layer, (layers.InputLayer, layers.Flatten, layers.Activation)):
        return 0, 0
    raise ValueError(f"layer_flops: no rule for {type(layer).__name__} layer '{layer.name}'")


def _activation_cost(layer, n_out: int) -> int:
    """FLOPs per image of the layer's own activation (tanh or softmax; linear is free)."""
    activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
    if activation in ("tanh", "softmax"):
        return ELEMENTWISE_FLOPS[activation] * n_out
    if activation != "linear":
        raise ValueError(f"layer_flops: no rule for activation '{activation}' of '{layer.name}'")
    return 0


def layer_flops(model) -> list[dict[str, Any]]:
    """Forward FLOPs per image of every layer of a Keras model (batch dimension dropped).

    Conv2D: 2*k*k*cin*cout*Hout*Wout (+Hout*Wout*cout for the bias); Dense: 2*in*out
    (+out); AveragePooling2D: pool_h*pool_w per output element; BatchNormalization, tanh,
    Dropout and softmax: ``ELEMENTWISE_FLOPS`` per output element. Input, Flatten: 0.
    """
    rows = []
    for layer in model.layers:
        out_shape = tuple(layer.output.shape[1:])
        matmul, elementwise = _layer_cost(layer, out_shape)
        elementwise += _activation_cost(layer, math.prod(out_shape))
        rows.append({"layer": layer.name, "type": type(layer).__name__, "output_shape": list(out_shape),
                     "matmul_flops": int(matmul), "elementwise_flops": int(elementwise),
                     "flops": int(matmul + elementwise)})
    return rows


def flops_summary(model) -> dict[str, Any]:
    """Per-image totals of ``layer_flops``; training counts ``TRAIN_FLOPS_FACTOR`` x forward."""
    rows = layer_flops(model)
    forward = sum(r["flops"] for r in rows)
    matmul = sum(r["matmul_flops"] for r in rows)
    return {"forward_flops_per_image": forward, "matmul_flops_per_image": matmul,
            "elementwise_flops_per_image": forward - matmul,
            "train_flops_per_image": TRAIN_FLOPS_FACTOR * forward, "layers": rows}
