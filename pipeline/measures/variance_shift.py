"""Variance shift (Li, Chen, Hu & Yang, CVPR 2019): how far each BN layer's input variance
at inference is from the moving variance it learned in training, which dropout placed
before BN inflates. Pure NumPy.

In: per BN layer, per-channel ratios ``(Var_inference + eps) / (moving_variance + eps)``
(``pipeline.measures.monitor.variance_ratios`` takes them from a model).
Out: ``shift_from_ratios``: per BN layer, one float (1.0: no shift; 2.0: a factor of two either way);
``merge_moments``: per-channel count, mean and sum of squared deviations, merged batch by batch.
"""

from __future__ import annotations

import numpy as np


def shift_from_ratios(ratios: dict[str, np.ndarray]) -> dict[str, float]:
    """Per BN layer: the mean over channels of ``max(r, 1/r)``."""
    return {name: float(np.maximum(r, 1.0 / r).mean()) for name, r in ratios.items()}


Moments = tuple[int, np.ndarray, np.ndarray]  # (n, mean, M2) per channel


def merge_moments(state: Moments | None, batch) -> Moments:
    """``state`` with ``batch`` added: per channel (the last axis), over every other axis, the count,
    mean and sum of squared deviations (Chan et al.'s pairwise formula, float64). ``state`` None: none yet.
    Variance is ``M2 / n``."""
    a = np.asarray(batch, dtype=np.float64)
    a = a.reshape(-1, a.shape[-1])
    n_b, mean_b = len(a), a.mean(axis=0)
    m2_b = ((a - mean_b) ** 2).sum(axis=0)
    if state is None:
        return n_b, mean_b, m2_b
    n_a, mean_a, m2_a = state
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta ** 2 * n_a * n_b / n
