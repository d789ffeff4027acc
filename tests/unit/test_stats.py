"""pipeline.compare.stats against hand-worked answers and SciPy: pure and fast."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pipeline.compare import stats

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def _wilson_by_hand(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# --- Wilson interval -------------------------------------------------------------------------


# --- exact McNemar ---------------------------------------------------------------------------


def _paired(only_a: int, only_b: int, both: int = 50, neither: int = 5) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * neither, dtype=bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * neither, dtype=bool)
    order = np.random.default_rng(0).permutation(len(a))
    return a[order], b[order]


def test_mcnemar_worked_by_hand():
    # 12 discordant images, 2 of them B's: p = 2 * P(X <= 2), X ~ Bin(12, 1/2)
    expected = 2 * (1 + 12 + 66) / 4096
    result = stats.mcnemar(*_paired(10, 2))
    assert (result.only_a, result.only_b) == (10, 2)
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.03857, abs=1e-5)
    swapped = stats.mcnemar(*reversed(_paired(10, 2)))
    assert (swapped.only_a, swapped.only_b) == (2, 10)
    assert swapped.p_value == pytest.approx(expected, rel=1e-12)


def test_mcnemar_ignores_concordant_pairs():
    few = stats.mcnemar(*_paired(10, 2, both=0, neither=0))
    many = stats.mcnemar(*_paired(10, 2, both=9000, neither=900))
    assert few == many


@pytest.mark.parametrize("k", [1, 3, 40])
def test_mcnemar_equal_discordant_counts_give_one(k):
    result = stats.mcnemar(*_paired(k, k))
    assert (result.only_a, result.only_b, result.p_value) == (k, k, 1.0)


def test_mcnemar_no_discordant_pairs_gives_one():
    a, b = _paired(0, 0)
    assert np.array_equal(a, b)
    assert stats.mcnemar(a, b) == stats.McNemar(0, 0, 1.0)


def test_mcnemar_one_discordant_pair_is_not_significant():
    assert stats.mcnemar(*_paired(1, 0)).p_value == 1.0  # 2 * P(X <= 0), X ~ Bin(1, 1/2)
    assert stats.mcnemar(*_paired(6, 0)).p_value == pytest.approx(2 / 64)


@pytest.mark.parametrize("seed", range(8))
def test_mcnemar_equals_scipy_binomtest(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 500))
    a = rng.random(n) < rng.uniform(0.5, 0.99)
    b = rng.random(n) < rng.uniform(0.5, 0.99)
    result = stats.mcnemar(a, b)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    assert (result.only_a, result.only_b) == (only_a, only_b)
    assert only_a + only_b > 0
    expected = sps.binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue
    assert result.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_accepts_int_columns_and_refuses_unpaired_vectors():
    assert stats.mcnemar(np.array([1, 1, 0]), np.array([0, 1, 1])) == stats.mcnemar(
        np.array([True, True, False]), np.array([False, True, True]))
    with pytest.raises(ValueError, match="differ in shape"):
        stats.mcnemar(np.ones(5, bool), np.ones(4, bool))


# --- paired t across seeds -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_paired_t_equals_scipy_ttest_rel(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 8))
    a = list(0.98 + 0.003 * rng.standard_normal(n))
    b = list(0.975 + 0.003 * rng.standard_normal(n))
    expected = sps.ttest_rel(a, b).pvalue
    assert stats.paired_t(a, b) == pytest.approx(expected, rel=1e-12)
    assert stats.paired_t(b, a) == pytest.approx(expected, rel=1e-12)  # two-sided


def test_paired_t_hand_example():
    # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 3.4641 on 2 df
    p = stats.paired_t([0.91, 0.92, 0.93], [0.90, 0.90, 0.90])
    assert p == pytest.approx(2 * sps.t.sf(2 * math.sqrt(3), 2), rel=1e-9)
    assert p == pytest.approx(0.0742, abs=1e-4)


def test_paired_t_degenerate_cases():
    assert math.isnan(stats.paired_t([0.9], [0.8]))
    assert math.isnan(stats.paired_t([], []))
    assert stats.paired_t([0.9, 0.8, 0.7], [0.9, 0.8, 0.7]) == 1.0   # identical: no difference at all
    assert math.isnan(stats.paired_t([0.9, 0.8, 0.7], [0.8, 0.7, 0.6]))  # the same nonzero gap: t undefined
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_t([0.9, 0.8], [0.9])


def test_paired_t_three_seeds_one_image_apart_is_not_p_zero():
    # each seed: a gets exactly one more of 10,000 images right; the floats differ in their last bits
    a = [9876 / 10000, 9300 / 10000, 9877 / 10000]
    b = [9875 / 10000, 9299 / 10000, 9876 / 10000]
    assert len({x - y for x, y in zip(a, b)}) > 1  # not bit-identical differences
    p = stats.paired_t(a, b)
    assert math.isnan(p)  # undefined, never 0 (the report's verdict: tests/unit/test_evidence.py)


# --- summaries ------------------------------------------------------------------


def test_mean_std():
    values = [0.97, 0.98, 0.99, 0.985]
    mean, std = stats.mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert stats.mean_std([0.5]) == (0.5, 0.0)


