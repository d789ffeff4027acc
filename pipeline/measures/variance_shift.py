"""Variance shift (Li, Chen, Hu & Yang, CVPR 2019): how far each BN layer's input variance
at inference is from the moving variance it learned in training, which dropout placed
before BN inflates. Pure NumPy.

In: per BN layer, per-channel ratios ``(Var_inference + eps) / (moving_variance + eps)``
(``pipeline.measures.monitor.variance_ratios`` takes them from a model).
Out: ``shift_from_ratios``: per BN layer, one float (1.0: no shift; 2.0: a factor of two either way).
"""

from __future__ import annotations

import numpy as np


def shift_from_ratios(ratios: dict[str, np.ndarray]) -> dict[str, float]:
    """Per BN layer: the mean over channels of ``max(r, 1/r)``."""
    return {name: float(np.maximum(r, 1.0 / r).mean()) for name, r in ratios.items()}
