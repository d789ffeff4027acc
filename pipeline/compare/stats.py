"""The statistics behind the report's verdicts.

In: per-example correctness vectors (one bool per test image) and per-seed accuracies.
Out: exact McNemar tests per pair of networks (which test images one gets right and the other
wrong), paired t-tests across seeds, and the mean and std over seeds. The verdicts' statistics,
with both seeds and test images as sources of noise, are ``pipeline.compare.evidence``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class McNemar:
    only_a: int   # images A got right and B got wrong
    only_b: int   # images B got right and A got wrong
    p_value: float


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """Exact (binomial) two-sided McNemar test on paired per-example correctness."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired vectors differ in shape: {a.shape} vs {b.shape}")
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    n = only_a + only_b
    p = 1.0 if n == 0 else float(sps.binomtest(only_a, n, 0.5).pvalue)
    return McNemar(only_a, only_b, p)


def paired_t(acc_a: list[float], acc_b: list[float]) -> float:
    """Two-sided p of a paired t-test across seeds.

    NaN where the test is undefined: fewer than 2 pairs, or the same non-zero difference on every
    seed (zero spread: t would be infinite, yet one-image steps make that common, so it is no
    evidence). 1.0 when every difference is zero.
    """
    if len(acc_a) != len(acc_b):
        raise ValueError("paired samples differ in length")
    if len(acc_a) < 2:
        return float("nan")
    diff = np.asarray(acc_a) - np.asarray(acc_b)
    if np.allclose(diff, diff[0], rtol=0.0, atol=1e-12):
        return 1.0 if np.allclose(diff, 0.0, rtol=0.0, atol=1e-12) else float("nan")
    return float(sps.ttest_rel(acc_a, acc_b).pvalue)


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


