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


def test_wilson_textbook_value():
    lo, hi = stats.wilson_interval(8, 10, 0.95)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)


@pytest.mark.parametrize("k, n", [(9875, 10000), (9294, 10000), (1, 200), (150, 200)])
def test_wilson_matches_the_closed_formula(k, n):
    assert stats.wilson_interval(k, n, 0.95) == pytest.approx(_wilson_by_hand(k, n, Z95), abs=1e-12)


def test_wilson_notebook_accuracy_interval_is_about_a_fifth_of_a_point_wide():
    # worked by hand: centre 0.987692 / 1.000384 = 0.987313, half 1.959213 * sqrt(1.24398e-6) = 0.002185
    lo, hi = stats.wilson_interval(9875, 10000)
    assert lo == pytest.approx(0.985128, abs=2e-6) and hi == pytest.approx(0.989498, abs=2e-6)
    assert lo < 9872 / 10000 < hi  # bn_all's 0.9872 lies inside bn_hidden's interval


def test_wilson_other_confidence_is_wider_or_narrower():
    z99 = sps.norm.ppf(0.995)
    assert stats.wilson_interval(8, 10, 0.99) == pytest.approx(_wilson_by_hand(8, 10, z99), abs=1e-12)
    lo95, hi95 = stats.wilson_interval(8, 10, 0.95)
    lo99, hi99 = stats.wilson_interval(8, 10, 0.99)
    lo80, hi80 = stats.wilson_interval(8, 10, 0.80)
    assert lo99 < lo95 < lo80 < 0.8 < hi80 < hi95 < hi99


def test_wilson_edges_stay_inside_zero_one():
    lo, hi = stats.wilson_interval(0, 50)
    assert lo == pytest.approx(0.0, abs=1e-15) and lo >= 0.0
    assert hi == pytest.approx(_wilson_by_hand(0, 50, Z95)[1], rel=1e-12)
    lo, hi = stats.wilson_interval(50, 50)
    assert hi == pytest.approx(1.0) and 0.9 < lo < 1.0
    with pytest.raises(ValueError, match="n must be positive"):
        stats.wilson_interval(0, 0)


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
    assert math.isnan(p)
    assert stats.verdict("a", "b", 0.01, p, 0.05).endswith("— not distinguishable")


# --- Holm ------------------------------------------------------------------------------------


def test_holm_hand_worked():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(0.06, 1*0.04)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_is_monotone_and_capped_at_one():
    assert stats.holm([0.04, 0.01]) == pytest.approx([0.04, 0.02])
    assert stats.holm([0.5, 0.6, 0.2]) == pytest.approx([1.0, 1.0, 0.6])
    assert stats.holm([0.02]) == [0.02]
    assert stats.holm([]) == []


def test_holm_passes_nan_through_and_does_not_count_it():
    out = stats.holm([0.01, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    assert math.isnan(out[1])
    assert all(math.isnan(p) for p in stats.holm([float("nan"), float("nan")]))


@pytest.mark.parametrize("seed", range(4))
def test_holm_against_the_definition(seed):
    p = list(np.random.default_rng(seed).uniform(0, 0.2, size=6))
    m = len(p)
    order = np.argsort(p)
    expected = [0.0] * m
    for rank, i in enumerate(order):
        expected[i] = min(1.0, max((m - r) * p[order[r]] for r in range(rank + 1)))
    assert stats.holm(p) == pytest.approx(expected, rel=1e-12)


# --- summaries and verdicts ------------------------------------------------------------------


def test_mean_std_and_t_interval():
    values = [0.97, 0.98, 0.99, 0.985]
    mean, std = stats.mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert stats.mean_std([0.5]) == (0.5, 0.0)
    expected = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert stats.t_interval(values, 0.95) == pytest.approx(expected, rel=1e-12)
    assert stats.t_interval([0.5]) == (0.5, 0.5)


def test_verdict_not_distinguishable():
    assert stats.verdict("bn_hidden", "bn_all", 0.03, 0.6, 0.05) == \
        "bn_hidden vs bn_all: +0.03 pp, p = 0.6 — not distinguishable"
    assert stats.verdict("a", "b", -1.234, 0.05, 0.05) == "a vs b: -1.23 pp, p = 0.05 — not distinguishable"


def test_verdict_names_the_better_side():
    assert stats.verdict("bn_hidden", "dropout", 5.81, 0.0001, 0.05) == \
        "bn_hidden vs dropout: +5.81 pp, p = 0.0001 — bn_hidden is better"
    assert stats.verdict("dropout", "plain", -1.2, 0.003, 0.05) == \
        "dropout vs plain: -1.20 pp, p = 0.003 — plain is better"
    assert stats.verdict("a", "b", 0.5, 0.02, 0.01).endswith("— not distinguishable")  # alpha is honoured
    assert stats.verdict("a", "b", 0.5, 0.02, 0.05).endswith("— a is better")


def test_verdict_without_a_p_value():
    assert stats.verdict("a", "b", 0.1, float("nan"), 0.05) == "a vs b: +0.10 pp, p = n/a — not distinguishable"
