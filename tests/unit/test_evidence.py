"""pipeline.evidence against SciPy, brute-force enumeration and simulation: pure and fast (seconds)."""

from __future__ import annotations

import ast
import functools
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from conftest import holm_by_definition
from pipeline.compare import evidence as ev
from pipeline.compare import stats

PAIR = {"a": 1.0, "b": -1.0}
INTERACTION = {"bn_dropout": 1.0, "dropout": -1.0, "bn_all": -1.0, "plain": 1.0}


# --- a synthetic world: seeds and test images both vary ---------------------------------------

GH_X, GH_W = np.polynomial.hermite_e.hermegauss(40)
GH_W = GH_W / GH_W.sum()


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


@functools.lru_cache(maxsize=None)
def _world(logits: tuple[float, ...], seed_sd: float, image_sd: float, variant_image_sd: float,
           n_seeds: int, n_images: int, n_studies: int = 200, population: int = 5000):
    """Studies drawn from a known population. P(image i right | variant v, seed s) =
    sigmoid(logit_v + seed offset + difficulty_i + variant-specific difficulty_vi); each study
    trains n_seeds fresh seeds per variant and draws n_images fresh test images. Returns the
    true population accuracy per variant (expectation over seeds by Gauss-Hermite, mean over
    the image population) and per study a correctness matrix per variant."""
    rng = np.random.default_rng(20261203)
    difficulty = rng.normal(0, image_sd, population)
    own = rng.normal(0, variant_image_sd, (len(logits), population))
    truth = [float((_sigmoid(mu + seed_sd * GH_X[:, None] + difficulty + own[v]) * GH_W[:, None]).sum(0).mean())
             for v, mu in enumerate(logits)]
    images = rng.integers(0, population, (n_studies, n_images))
    studies = []
    for v, mu in enumerate(logits):
        offset = rng.normal(0, seed_sd, (n_studies, n_seeds, 1))
        prob = _sigmoid(mu + offset + difficulty[images][:, None, :] + own[v][images][:, None, :])
        studies.append(rng.random(prob.shape) < prob)
    return truth, studies


def _studies(names, **world):
    truth, studies = _world(**world)
    n = studies[0].shape[0]
    return dict(zip(names, truth)), [{name: s[k] for name, s in zip(names, studies)} for k in range(n)]


def _true_contrast(truth, weights):
    return sum(w * truth[name] for name, w in weights.items())


# --- building blocks against independent computations -----------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_mean_squares_equal_a_least_squares_fit_of_the_additive_model(seed):
    rng = np.random.default_rng(seed)
    s, n = 4, 9
    c = rng.integers(-1, 2, (s, n)).astype(float)
    y = c.ravel()
    rows, cols = np.repeat(np.arange(s), n), np.tile(np.arange(n), s)
    one = np.ones((s * n, 1))
    seed_cols, image_cols = np.eye(s)[rows][:, 1:], np.eye(n)[cols][:, 1:]

    def rss(x):
        fit = np.linalg.lstsq(x, y, rcond=None)[0]
        return float(np.sum((y - x @ fit) ** 2))

    full = rss(np.hstack([one, seed_cols, image_cols]))
    expected = ((rss(np.hstack([one, image_cols])) - full) / (s - 1),
                (rss(np.hstack([one, seed_cols])) - full) / (n - 1), full / ((s - 1) * (n - 1)))
    assert ev.mean_squares(c) == pytest.approx(expected, rel=1e-9)


def _rows_constant(values: list[list[float]]) -> dict[str, np.ndarray]:
    """Correctness matrices whose contrast is the same on every image of a seed (no image term)."""
    n = 6
    return {name: np.repeat(np.array(v, dtype=bool)[:, None], n, axis=1) for name, v in zip("abc", values)}


def test_without_image_noise_the_contrast_is_scipys_t_test_across_seeds():
    correct = _rows_constant([[1, 1, 0, 1, 1], [0, 1, 0, 0, 1], [1, 0, 0, 1, 1]])
    weights = {"a": 1.0, "b": -0.5, "c": 0.25}
    per_seed = np.array([1.25, 0.5, 0.0, 1.25, 0.75])
    c = ev.contrast(correct, weights, margin=0.2, alpha=0.05)
    assert c.per_seed == pytest.approx(per_seed)
    assert c.estimate == pytest.approx(per_seed.mean())
    assert c.df == pytest.approx(4)
    assert c.p == pytest.approx(sps.ttest_1samp(per_seed, 0).pvalue, rel=1e-9)
    assert c.p_paired_t == pytest.approx(sps.ttest_1samp(per_seed, 0).pvalue, rel=1e-9)
    low, high = sps.t.interval(0.95, 4, loc=per_seed.mean(), scale=sps.sem(per_seed))
    assert (c.interval.low, c.interval.high) == pytest.approx((low, high), rel=1e-9)
    low, high = sps.t.interval(0.90, 4, loc=per_seed.mean(), scale=sps.sem(per_seed))
    assert (c.equivalence_interval.low, c.equivalence_interval.high) == pytest.approx((low, high), rel=1e-9)
    tost = max(sps.ttest_1samp(per_seed, -0.2, alternative="greater").pvalue,
               sps.ttest_1samp(per_seed, 0.2, alternative="less").pvalue)
    assert c.p_tost == pytest.approx(tost, rel=1e-9)
    assert c.mde == pytest.approx((sps.t.ppf(0.975, 4) + sps.t.ppf(0.8, 4)) * sps.sem(per_seed), rel=1e-9)


def test_sign_flip_p_equals_brute_force_enumeration():
    rng = np.random.default_rng(7)
    for n in range(1, 8):
        d = rng.normal(0.3, 1, n)
        hits = 0
        for flips in range(2 ** n):
            total = sum(-x if flips >> k & 1 else x for k, x in enumerate(d))
            hits += abs(total) >= abs(sum(d)) - 1e-12
        assert ev.sign_flip_p(d) == pytest.approx(hits / 2 ** n)


@pytest.mark.parametrize("n, smallest", [(3, 0.25), (4, 0.125), (5, 0.0625)])
def test_sign_flip_p_cannot_go_below_two_over_two_to_the_seeds(n, smallest):
    assert ev.sign_flip_p([1e-4] * n) == smallest
    assert ev.sign_flip_p(np.arange(1, n + 1) * 1e-4) == smallest
    assert ev.sign_flip_p([0.0] * n) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_paired_t_p_equals_scipy(seed):
    d = np.random.default_rng(seed).normal(0.001, 0.002, 3 + seed)
    assert ev.paired_t_p(d) == pytest.approx(sps.ttest_1samp(d, 0).pvalue, rel=1e-12)


def test_paired_t_p_is_nan_when_undefined_never_zero():
    assert math.isnan(ev.paired_t_p([1e-4, 1e-4, 1e-4]))
    assert math.isnan(ev.paired_t_p([9300 / 10000 - 9299 / 10000, 9876 / 10000 - 9875 / 10000, 1e-4]))
    assert math.isnan(ev.paired_t_p([0.5]))
    assert ev.paired_t_p([0.0, 0.0, 0.0]) == 1.0


# --- the cases --------------------------------------------------------------------------


def _one_image_apart(same_image: bool, n_seeds: int = 3, n: int = 10_000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    b = rng.random((n_seeds, n)) < 0.988
    b[:, 0] = False
    a = b.copy()
    for s in range(n_seeds):
        a[s, 0 if same_image else np.flatnonzero(~b[s])[s + 1]] = True   # exactly one more image right
    return {"a": a, "b": b}


@pytest.mark.parametrize("same_image", [False, True])
def test_three_seeds_one_image_apart_is_no_evidence_of_a_difference(same_image):
    correct = _one_image_apart(same_image)
    diffs = [correct["a"][s].mean() - correct["b"][s].mean() for s in range(3)]
    assert math.isnan(stats.paired_t(list(correct["a"].mean(axis=1)), list(correct["b"].mean(axis=1))))
    c = ev.contrast(correct, PAIR, margin=0.001, alpha=0.05)
    assert c.per_seed == pytest.approx(diffs) and c.estimate == pytest.approx(1e-4)
    assert c.p > 0.05 and c.p_adjusted > 0.05
    assert math.isnan(c.p_paired_t)
    assert c.p_sign_flip == 0.25
    assert c.verdict != ev.POSITIVE and not c.interval.excludes(0.0)
    assert c.verdict == ev.EQUIVALENT   # 10,000 images put it well inside ±0.1 pp


def test_a_p_value_is_never_zero():
    # every seed makes the same predictions: t is enormous on about N - 1 df, the tail underflows
    rng = np.random.default_rng(2)
    correct = {"a": np.tile(rng.random(10_000) < 0.999, (3, 1)), "b": np.tile(rng.random(10_000) < 0.3, (3, 1))}
    assert sps.t.sf(100.0, 9999) == 0.0
    c = ev.contrast(correct, PAIR, margin=0.001, alpha=0.05)
    assert c.p == ev.P_FLOOR > 0 and c.verdict == ev.POSITIVE and c.df == pytest.approx(9999)
    assert c.p_sign_flip == 0.25 and math.isnan(c.p_paired_t)


# --- TOST, mde and directions ------------------------------------------------------------------


def test_an_exact_tie_with_plenty_of_data_is_equivalent():
    rng = np.random.default_rng(3)
    a = rng.random((5, 20_000)) < 0.98
    b = np.array([rng.permutation(row) for row in a])   # the same accuracy on every seed, other images
    c = ev.contrast({"a": a, "b": b}, PAIR, margin=0.002, alpha=0.05)
    assert c.estimate == 0.0 and c.per_seed == (0.0,) * 5
    assert c.verdict == ev.EQUIVALENT and c.p_tost < 0.05
    assert -0.002 < c.equivalence_interval.low < 0 < c.equivalence_interval.high < 0.002


def test_a_tiny_noisy_study_is_inconclusive_and_says_what_it_could_have_detected():
    rng = np.random.default_rng(4)
    correct = {"a": rng.random((3, 40)) < 0.9, "b": rng.random((3, 40)) < 0.88}
    c = ev.contrast(correct, PAIR, margin=0.001, alpha=0.05)
    assert c.verdict == ev.INCONCLUSIVE
    assert c.interval.low < 0 < c.interval.high
    assert c.mde > abs(c.estimate) and c.mde > 0.05 and c.p_tost > 0.05


@pytest.mark.parametrize("weights, verdict", [({"a": 1, "b": -1}, ev.POSITIVE), ({"b": 1, "a": -1}, ev.NEGATIVE)])
def test_a_large_clear_difference_gets_its_direction(weights, verdict):
    rng = np.random.default_rng(5)
    correct = {"a": rng.random((3, 10_000)) < 0.98, "b": rng.random((3, 10_000)) < 0.92}
    c = ev.contrast(correct, weights, margin=0.001, alpha=0.05)
    assert c.verdict == verdict and ev.PAIR_WORDS[c.verdict] in ("a better", "b better")
    assert c.interval.excludes(0.0) and abs(c.estimate) == pytest.approx(0.06, abs=0.005)


def test_mde_is_detected_with_about_80_percent_power():
    # many images, no seed or image effects: the estimate is nearly normal with df ~ S(N-1)
    rng = np.random.default_rng(6)
    base = ev.contrast({"a": rng.random((2, 2000)) < 0.9, "b": rng.random((2, 2000)) < 0.9}, PAIR,
                       margin=0.0, alpha=0.05)
    shift = base.mde
    hits = 0
    for _ in range(300):
        correct = {"a": rng.random((2, 2000)) < 0.9 + shift, "b": rng.random((2, 2000)) < 0.9}
        hits += ev.contrast(correct, PAIR, margin=0.0, alpha=0.05).verdict == ev.POSITIVE
    assert 0.72 < hits / 300 < 0.88


# --- coverage: both seeds and test images vary ---------------------------------------------------


def _coverage(names, weights, **world):
    truth, studies = _studies(names, **world)
    target = _true_contrast(truth, weights)
    new, old = [], []
    for correct in studies:
        c = ev.contrast(correct, weights, margin=0.001, alpha=0.05)
        new.append(c.interval.low <= target <= c.interval.high)
        low, high = sps.t.interval(0.95, len(c.per_seed) - 1, loc=np.mean(c.per_seed),
                                   scale=sps.sem(c.per_seed))   # the report's old across-seeds interval
        old.append(low <= target <= high)
    return float(np.mean(new)), float(np.mean(old))


@pytest.mark.parametrize("names, weights, world", [
    ("ab", PAIR, dict(logits=(2.5, 2.3), seed_sd=0.2, image_sd=1.5, variant_image_sd=0.7, n_seeds=3, n_images=300)),
    ("ab", PAIR, dict(logits=(2.5, 2.3), seed_sd=0.2, image_sd=1.5, variant_image_sd=0.7, n_seeds=5, n_images=300)),
    ("ab", PAIR, dict(logits=(2.5, 2.5), seed_sd=0.5, image_sd=1.5, variant_image_sd=0.1, n_seeds=3, n_images=300)),
    (("bn_dropout", "dropout", "bn_all", "plain"), INTERACTION,
     dict(logits=(2.5, 2.3, 2.0, 2.4), seed_sd=0.2, image_sd=1.5, variant_image_sd=0.7, n_seeds=3, n_images=200)),
], ids=["mixed-3-seeds", "mixed-5-seeds", "seeds-dominate", "interaction"])
def test_the_interval_covers_the_population_contrast_at_about_its_nominal_rate(names, weights, world):
    new, _ = _coverage(names, weights, **world)
    assert 0.90 <= new <= 0.99, new


def test_the_old_across_seeds_interval_undercovers_when_test_images_dominate():
    # models nearly deterministic per image, each variant with its own hard images, little seed noise
    world = dict(logits=(4.0, 4.0), seed_sd=0.05, image_sd=4.0, variant_image_sd=4.0, n_seeds=5, n_images=200)
    new, old = _coverage("ab", PAIR, **world)
    assert 0.90 <= new <= 0.99, new
    assert old < 0.85, old


def test_the_standard_error_matches_the_spread_of_estimates_across_studies():
    world = dict(logits=(2.5, 2.3), seed_sd=0.3, image_sd=1.5, variant_image_sd=1.0, n_seeds=5, n_images=300)
    _, studies = _studies("ab", **world)
    results = [ev.contrast(correct, PAIR, margin=0.001, alpha=0.05) for correct in studies]
    spread = np.var([c.estimate for c in results], ddof=1)
    assert np.mean([c.se ** 2 for c in results]) == pytest.approx(spread, rel=0.25)


# --- Holm over a family -------------------------------------------------------------------------


def _with(c: ev.Contrast, estimate: float, se: float, df: float = 50.0) -> ev.Contrast:
    p = float(2 * sps.t.sf(abs(estimate / se), df))
    return ev.at_level(replace(c, estimate=estimate, se=se, df=df, p=p, p_adjusted=p), c.alpha)


@functools.lru_cache(maxsize=None)
def _template() -> ev.Contrast:
    rng = np.random.default_rng(8)
    return ev.contrast({"a": rng.random((3, 50)) < 0.9, "b": rng.random((3, 50)) < 0.9}, PAIR, margin=0.01, alpha=0.05)


def _family(estimates, se=0.004):
    return [_with(_template(), e, se) for e in estimates]


def test_holm_adjusted_p_equals_the_reports_holm_over_this_family_only():
    family = _family([0.02, 0.009, 0.0, -0.011, 0.003, 0.03])
    judged = ev.judge_family(family, 0.05)
    assert [c.p_adjusted for c in judged] == pytest.approx(holm_by_definition([c.p for c in family]), rel=1e-12)
    smaller = ev.judge_family(family[:3], 0.05)
    for few, many in zip(smaller, judged[:3]):
        assert few.p_adjusted <= many.p_adjusted
    assert smaller[1].p_adjusted < judged[1].p_adjusted


def test_family_intervals_agree_with_the_verdicts():
    rng = np.random.default_rng(9)
    for _ in range(30):
        family = _family(rng.normal(0, 0.012, int(rng.integers(2, 10))))
        for c in ev.judge_family(family, 0.05):
            direction = c.verdict in (ev.POSITIVE, ev.NEGATIVE)
            assert direction == c.interval.excludes(0.0) == (c.p_adjusted < 0.05)
            assert c.interval.confidence == pytest.approx(1 - c.alpha)
            inside = -c.margin < c.equivalence_interval.low and c.equivalence_interval.high < c.margin
            assert (c.verdict == ev.EQUIVALENT) == (not direction and inside)


def test_holm_step_down_stops_at_the_first_failure_and_clamps_the_rest():
    # sorted ps: p1 fails alpha/3 although p2 would pass alpha/2 on its own
    a, b, c = _family([0.0095, 0.0096, 0.0], se=0.004)
    assert a.p > 0.05 / 3 and b.p < 0.05 / 2
    judged = ev.judge_family([a, b, c], 0.05)
    assert all(j.verdict not in (ev.POSITIVE, ev.NEGATIVE) for j in judged)
    assert [j.alpha for j in judged] == pytest.approx([0.05 / 3] * 3)
    assert not judged[1].interval.excludes(0.0)
    strong = _with(_template(), 0.05, 0.004)
    judged = ev.judge_family([strong, a, b, c], 0.05)
    assert judged[0].verdict == ev.POSITIVE and judged[0].alpha == pytest.approx(0.05 / 4)
    assert [j.alpha for j in judged[1:]] == pytest.approx([0.05 / 3] * 3)


def test_a_family_of_one_is_the_contrast_alone():
    c = _family([0.009])[0]
    (alone,) = ev.judge_family([c], 0.05)
    assert alone == c


# --- reproduction of a single run -----------------------------------------------------------------


def test_reproduction_is_the_t_prediction_interval_when_seeds_vary_more_than_images():
    rng = np.random.default_rng(10)
    acc = np.array([0.90, 0.91, 0.905, 0.915])
    correct = rng.random((4, 20_000)) < acc[:, None]
    per_seed = correct.mean(axis=1)
    r = ev.reproduction(0.99, correct, alpha=0.05)
    half = sps.t.ppf(0.975, 3) * per_seed.std(ddof=1) * math.sqrt(1 + 1 / 4)
    assert (r.prediction.low, r.prediction.high) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    assert r.outside_by == pytest.approx(0.99 - r.prediction.high) and not r.reproduced
    below = ev.reproduction(0.80, correct, alpha=0.05)
    assert below.outside_by == pytest.approx(0.80 - r.prediction.low) and below.outside_by < 0
    inside = ev.reproduction(float(per_seed.mean()), correct, alpha=0.05)
    assert inside.reproduced and inside.outside_by == 0.0 and inside.p == pytest.approx(1.0)


def test_one_new_run_lands_in_the_prediction_interval_at_about_its_nominal_rate():
    world = dict(logits=(2.5, 2.5), seed_sd=0.15, image_sd=1.5, variant_image_sd=0.0, n_seeds=4, n_images=300)
    _, studies = _studies("ab", **world)
    # seeds 0-2 of variant a make the study, seed 3 is the new run on the same test images
    hits = [ev.reproduction(float(s["a"][3].mean()), s["a"][:3], alpha=0.05).reproduced for s in studies]
    assert 0.90 <= np.mean(hits) <= 0.99, np.mean(hits)


# --- inputs, purity, speed ------------------------------------------------------------------------


def test_inputs_are_checked():
    ok = np.ones((3, 10), bool)
    with pytest.raises(ValueError, match="differ in shape"):
        ev.contrast({"a": ok, "b": np.ones((3, 9), bool)}, PAIR, margin=0.001, alpha=0.05)
    with pytest.raises(ValueError, match="n_images >= 2"):
        ev.contrast({"a": ok[:, :1], "b": ok[:, :1]}, PAIR, margin=0.001, alpha=0.05)
    with pytest.raises(ValueError, match="margin"):
        ev.contrast({"a": ok, "b": ok}, PAIR, margin=-1, alpha=0.05)


def test_identical_predictions_have_no_p_and_no_verdict_beyond_inconclusive():
    ok = np.random.default_rng(11).random((3, 10)) < 0.5
    c = ev.contrast({"a": ok, "b": ok.copy()}, PAIR, margin=0.001, alpha=0.05)
    assert c.estimate == 0 and c.se == 0 and math.isnan(c.p) and c.verdict == ev.INCONCLUSIVE
    assert ev.judge_family([c], 0.05)[0].verdict == ev.INCONCLUSIVE
    always = ev.contrast({"a": np.ones((3, 10), bool), "b": np.zeros((3, 10), bool)}, PAIR, margin=0.001, alpha=0.05)
    assert always.estimate == 1 and math.isnan(always.p) and always.verdict == ev.INCONCLUSIVE
    assert not always.interval.excludes(0.0)   # no interval to show, so none that disagrees


def test_the_module_imports_only_numpy_scipy_and_the_standard_library():
    tree = ast.parse(Path(ev.__file__).read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"__future__", "itertools", "math", "collections", "dataclasses", "numpy", "scipy"}, roots


def test_one_interaction_over_5_seeds_and_10000_images_takes_milliseconds():
    rng = np.random.default_rng(12)
    correct = {name: rng.random((5, 10_000)) < 0.95 for name in INTERACTION}
    ev.contrast(correct, INTERACTION, margin=0.001, alpha=0.05)
    start = time.perf_counter()
    for _ in range(5):
        ev.contrast(correct, INTERACTION, margin=0.001, alpha=0.05)
    assert (time.perf_counter() - start) / 5 < 0.2


def test_one_seed_is_a_paired_test_over_the_images_alone():
    """With one seed the standard error is the images' (the one-sample t over per-image differences):
    checked against SciPy's paired t-test on the same vectors."""
    rng = np.random.default_rng(5)
    a = rng.random((1, 400)) < 0.9
    b = rng.random((1, 400)) < 0.8
    c = ev.contrast({"a": a, "b": b}, PAIR, margin=0.001, alpha=0.05)
    expected = sps.ttest_rel(a[0].astype(float), b[0].astype(float))
    assert c.df == 399 and math.isclose(c.p, max(ev.P_FLOOR, expected.pvalue), rel_tol=1e-9)
    assert math.isnan(c.p_paired_t) and c.p_sign_flip == 1.0
    r = ev.reproduction(0.5, a, alpha=0.05)
    assert not r.reproduced and r.df == 399

