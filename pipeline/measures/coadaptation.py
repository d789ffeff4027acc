"""Co-adaptation (Srivastava et al. 2014; Cogswell et al. 2016, DeCov): how correlated
the units of one layer are.

In: a 2-D ``(examples, units)`` activation matrix, two such matrices from two networks on
the same examples, (``pipeline.measures.monitor`` takes them from a model).
Out: floats: ``mean_abs_correlation`` (mean absolute off-diagonal correlation),
``coadaptation_difference`` (a paired difference with a bootstrap interval, as a dict).
"""

from __future__ import annotations

import numpy as np


def mean_abs_correlation(acts) -> float:
    """Mean absolute off-diagonal Pearson correlation between the columns (units) of a
    2-D ``(n_examples, units)`` matrix.

    Units with zero variance (std <= 1e-8, e.g. a saturated or dead unit) have no defined
    correlation and are left out, as if absent. NaN if fewer than two units remain.
    """
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D (examples, units) matrix, got shape {a.shape}")
    a = a - a.mean(axis=0)
    std = a.std(axis=0)
    live = std > 1e-8
    k = int(live.sum())
    if k < 2:
        return float("nan")
    z = a[:, live] / std[live]
    corr = (z.T @ z) / len(z)
    off_diagonal = np.abs(corr[~np.eye(k, dtype=bool)])
    return float(np.clip(off_diagonal, 0.0, 1.0).mean())


def coadaptation_difference(a, b, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """``mean_abs_correlation(a) - mean_abs_correlation(b)`` for two networks' activations
    on the *same* examples (row i of ``a`` and of ``b`` is the same image), with a paired
    bootstrap interval over examples: each resample draws the same rows from both.

    Returns ``{"difference", "low", "high"}``. The interval reflects which probe images were
    drawn, not training noise (for that, compare seeds).
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if len(a) != len(b):
        raise ValueError(f"paired activations need the same examples: {len(a)} rows vs {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(0, len(a), size=len(a))
        boots[i] = mean_abs_correlation(a[rows]) - mean_abs_correlation(b[rows])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(boots, [tail, 100 - tail])
    return {"difference": mean_abs_correlation(a) - mean_abs_correlation(b), "low": float(low), "high": float(high)}
