"""The statistics behind the report's verdicts.

In: per-example correctness vectors (one bool per test image) and per-seed accuracies.
Out: plain numbers and dicts: Wilson intervals, exact McNemar tests, paired t-tests
across seeds, Holm's step-down adjustment, and one-line verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``correct / n`` (SciPy's ``binomtest``)."""
    if n <= 0:
        raise ValueError("n must be positive")
    ci = sps.binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


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


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error); NaNs pass through."""
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: p_values[i])
    adjusted = list(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Interval for the mean across seeds (Student t); degenerate for one value."""
    arr = np.asarray(values, dtype=float)
    m = float(arr.mean())
    if len(arr) < 2:
        return m, m
    half = sps.t.ppf(0.5 + confidence / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return m - half, m + half


def verdict(a: str, b: str, diff_pp: float, p: float, alpha: float) -> str:
    """``"bn_hidden vs bn_all: +0.03 pp, p = 0.6 — not distinguishable"``."""
    p_text = "p = n/a" if math.isnan(p) else f"p = {p:.2g}"
    if math.isnan(p) or p >= alpha:
        call = "not distinguishable"
    else:
        call = f"{a if diff_pp > 0 else b} is better"
    return f"{a} vs {b}: {diff_pp:+.2f} pp, {p_text} — {call}"
