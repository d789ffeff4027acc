"""How much a difference in test accuracy is worth: uncertainty from seeds and from test images.

In: per-image correctness matrices, one per variant: a bool array of shape (n_seeds, n_images),
row s = seed s, column i = test image i, with the same seeds and the same images in the same
order for every variant (paired by seed and by image). NumPy and SciPy only.

Out:
- ``contrast(correct, weights, margin=, alpha=)``: a linear contrast of mean test accuracies
  (a pair a − b is ``{a: 1, b: -1}``; the batch-norm × dropout interaction
  (bn_dropout − dropout) − (bn_all − plain) is ``{bn_dropout: 1, dropout: -1, bn_all: -1,
  plain: 1}``) with its interval, p, TOST equivalence p, minimum detectable effect, the per-seed
  contrasts with an exact sign-flip p and a paired-t p, and a verdict: ``positive`` (for a pair:
  a better), ``negative`` (b better), ``equivalent`` or ``inconclusive``.
- ``judge_family(contrasts, alpha)``: the same contrasts judged under Holm's adjustment over
  that family only, each with the interval at the level its verdict used.
- ``reproduction(reference_accuracy, correct, alpha=)``: whether a single run's number (the
  notebook's) lies where one new run of the variant would land, and by how much it misses.

The population the verdicts generalise to: new training runs (seeds) of the same code and
settings, scored on new test images drawn like MNIST's test set. Both are sampled here.

Method: an analytic two-way (seed × image, crossed) random-effects variance decomposition.
For a contrast the per-cell values c[s, i] = Σ_v w_v · correct_v[s, i] follow
c = θ + a_s + b_i + e_si (seed effect, image effect, seed-by-image noise), and the estimate
ĉ = mean(c) has Var = σ²_seed/S + σ²_image/N + σ²_cell/(S·N). The three components come from
the ANOVA mean squares (MS_seed, MS_image, MS_cell), each truncated at zero
(σ̂²_seed = max(0, MS_seed − MS_cell)/N, likewise for images), and the interval and p use
Student's t with Satterthwaite's degrees of freedom for that combination. Why not a two-level
bootstrap: with 3 seeds resampling seeds has only 10 distinct outcomes and shrinks the seed
variance by (S − 1)/S with normal-looking quantiles (its 95% interval covered 0.88 of 300
simulated 3-seed studies where seeds dominate), and resampling both seeds and images counts the
seed-by-image noise three times. The decomposition is exactly the paired t-test across seeds
when images add nothing (the df fall to S − 1), becomes an image-level test when seeds add
nothing, needs no resampling seed, and takes under 10 ms for 4 variants × 5 seeds × 10,000
images. Its 95% intervals covered 0.92–0.96 of simulated studies (tests/test_evidence.py).

With one seed only the test images are sampled (the standard error is the images' alone, N − 1
df): the verdict then says whether these trained networks differ, not whether the variants do.

Assumptions, stated because the verdicts lean on them: seeds and images are exchangeable
draws, and the mean is close enough to t-distributed. With few discordant images (two
batch-norm variants disagreeing on a handful of 10,000) that approximation is weakest: read the
exact sign-flip p across seeds (``p_sign_flip``) beside it; with 3 seeds it cannot go below 0.25.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats as sps

POSITIVE, NEGATIVE, EQUIVALENT, INCONCLUSIVE = "positive", "negative", "equivalent", "inconclusive"
# what a verdict reads as for a pair contrast {a: 1, b: -1}
PAIR_WORDS = {POSITIVE: "a better", NEGATIVE: "b better", EQUIVALENT: EQUIVALENT, INCONCLUSIVE: INCONCLUSIVE}
POWER = 0.8
# the t approximation's far tail is not trusted to finer than this; a p at the floor reads "at most"
P_FLOOR = 1e-12


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    confidence: float   # e.g. 0.95

    def excludes(self, value: float) -> bool:
        return self.low > value or self.high < value   # False for an undefined (NaN) interval


@dataclass(frozen=True)
class Contrast:
    """A contrast of mean test accuracies (fractions, not pp), judged at level ``alpha``."""
    weights: tuple[tuple[str, float], ...]
    estimate: float
    se: float                 # both sources: seeds and test images
    df: float                 # Satterthwaite degrees of freedom of ``se``
    margin: float             # equivalence margin, same units as ``estimate``
    alpha: float              # the level the verdict used (Holm's step level inside a family)
    p: float                  # two-sided, contrast = 0; never 0 (NaN when ``se`` is 0)
    p_adjusted: float         # Holm-adjusted over the family judged with it; ``p`` when alone
    p_tost: float             # two one-sided tests of |contrast| >= margin
    interval: Interval        # (1 − alpha): excludes 0 exactly when the verdict is a direction
    equivalence_interval: Interval  # (1 − 2·alpha): inside ±margin exactly when TOST rejects
    mde: float                # smallest difference this study detects with 80% power at ``alpha``
    verdict: str
    per_seed: tuple[float, ...]     # the contrast on each seed's accuracies
    p_sign_flip: float        # exact, across seeds: all 2^S sign patterns
    p_paired_t: float         # t-test across seeds only; NaN where undefined
    n_images: int


@dataclass(frozen=True)
class Reproduction:
    """Whether a reference accuracy (one run) lies where one new run of the variant would."""
    reference: float
    mean: float               # this study's mean accuracy over seeds
    sd_run: float             # run-to-run standard deviation of one run's accuracy on these images
    df: float
    prediction: Interval      # where one new run lands with probability 1 − alpha
    outside_by: float         # reference − nearest end of ``prediction``; 0 inside
    p: float                  # two-sided: how unusual the reference is for one run

    @property
    def reproduced(self) -> bool:
        return self.outside_by == 0.0


def _matrix(x: np.ndarray) -> np.ndarray:
    m = np.asarray(x)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 2:
        raise ValueError(f"need a (n_seeds >= 1, n_images >= 2) correctness matrix, got shape {m.shape}")
    return m.astype(float)


def mean_squares(c: np.ndarray) -> tuple[float, float, float]:
    """Two-way ANOVA mean squares of an (S, N) matrix: seeds (rows), images (columns), cells."""
    s, n = c.shape
    grand, rows, cols = c.mean(), c.mean(axis=1), c.mean(axis=0)
    ms_seed = n * float(np.sum((rows - grand) ** 2)) / (s - 1)
    ms_image = s * float(np.sum((cols - grand) ** 2)) / (n - 1)
    resid = c - rows[:, None] - cols[None, :] + grand
    ms_cell = float(np.sum(resid ** 2)) / ((s - 1) * (n - 1))
    return ms_seed, ms_image, ms_cell


def _satterthwaite(terms: list[tuple[float, float]]) -> float:
    """Degrees of freedom of Σ terms, each (coefficient × mean square, its df)."""
    total = sum(value for value, _ in terms)
    denom = sum(value * value / df for value, df in terms if value != 0)
    return total * total / denom if denom > 0 else math.inf


def two_way_se(c: np.ndarray) -> tuple[float, float]:
    """Standard error of mean(c) over seeds and images, and its degrees of freedom.

    Var = [max(MS_seed, MS_cell) + max(MS_image, MS_cell) − MS_cell] / (S·N): the unbiased
    estimate with each variance component truncated at zero. A truncated component equals
    MS_cell and cancels with it, so it adds nothing to the Satterthwaite degrees of freedom.
    """
    s, n = c.shape
    if s == 1:  # one seed: the test images are the only source this design can see
        var = float(np.var(c[0], ddof=1))
        return (math.sqrt(var / n), float(n - 1)) if var > 0 else (0.0, math.nan)
    a, b, e = mean_squares(c)
    coef_e = -1.0 + (a < e) + (b < e)
    terms = [(a if a >= e else 0.0, s - 1), (b if b >= e else 0.0, n - 1), (coef_e * e, (s - 1) * (n - 1))]
    var = max(a, e) + max(b, e) - e
    if var <= 0:
        return 0.0, math.nan
    return math.sqrt(var / (s * n)), _satterthwaite(terms)


def sign_flip_p(per_seed: Sequence[float]) -> float:
    """Exact two-sided sign-flip p across seeds: the share of the 2^S sign patterns whose
    |mean| reaches the observed one. Its smallest value is 2 / 2^S (0.25 with 3 seeds)."""
    d = np.asarray(per_seed, dtype=float)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    flipped = np.abs(signs @ d)
    observed = abs(float(d.sum()))
    tol = 1e-9 * max(1e-300, float(np.abs(d).sum()))
    return float(np.mean(flipped >= observed - tol))


def paired_t_p(per_seed: Sequence[float]) -> float:
    """Two-sided one-sample t-test of the per-seed contrasts against 0 (seeds only).

    NaN where t is undefined: fewer than 2 seeds, or the same non-zero value on every seed.
    1.0 when every value is 0.
    """
    d = np.asarray(per_seed, dtype=float)
    if len(d) < 2:
        return math.nan
    scale = max(1e-300, float(np.abs(d).max()))
    if np.ptp(d) <= 1e-9 * scale:
        return 1.0 if np.all(d == 0) else math.nan
    return float(sps.ttest_1samp(d, 0.0).pvalue)


def _t_p(t: float, df: float) -> float:
    return max(P_FLOOR, float(2 * sps.t.sf(abs(t), df)))


def at_level(c: Contrast, alpha: float, p_adjusted: float | None = None) -> Contrast:
    """``c`` judged at level ``alpha``: its intervals, mde and verdict recomputed (the ps stay).

    Verdict rule: a direction when the (1 − alpha) interval excludes 0; else ``equivalent`` when
    the (1 − 2·alpha) interval lies inside ±margin (TOST at alpha rejects); else ``inconclusive``.
    """
    p_adj = c.p if p_adjusted is None else p_adjusted
    if not c.se > 0:   # the same value in every cell: no spread to judge it by
        return replace(c, alpha=alpha, p_adjusted=p_adj, interval=Interval(math.nan, math.nan, 1 - alpha),
                       equivalence_interval=Interval(math.nan, math.nan, 1 - 2 * alpha), verdict=INCONCLUSIVE,
                       mde=math.nan)
    half = float(sps.t.ppf(1 - alpha / 2, c.df)) * c.se
    eq_half = float(sps.t.ppf(1 - alpha, c.df)) * c.se
    interval = Interval(c.estimate - half, c.estimate + half, 1 - alpha)
    eq = Interval(c.estimate - eq_half, c.estimate + eq_half, 1 - 2 * alpha)
    if interval.excludes(0.0):
        verdict = POSITIVE if c.estimate > 0 else NEGATIVE
    elif -c.margin < eq.low and eq.high < c.margin:
        verdict = EQUIVALENT
    else:
        verdict = INCONCLUSIVE
    mde = half + float(sps.t.ppf(POWER, c.df)) * c.se
    return replace(c, alpha=alpha, p_adjusted=p_adj, interval=interval, equivalence_interval=eq,
                   mde=mde, verdict=verdict)


def contrast(correct: Mapping[str, np.ndarray], weights: Mapping[str, float], *, margin: float,
             alpha: float) -> Contrast:
    """The contrast Σ w_v · accuracy_v, its uncertainty over seeds and test images, and a verdict.

    ``mde`` = (t_{df, 1−alpha/2} + t_{df, 0.8}) · se: the true contrast this design would call
    real with 80% power. ``p_tost`` = max of the two one-sided t-test ps against ±margin.
    """
    if margin < 0 or not 0 < alpha < 0.5:
        raise ValueError("need margin >= 0 and 0 < alpha < 0.5")
    matrices = {name: _matrix(correct[name]) for name in weights}
    shapes = {m.shape for m in matrices.values()}
    if len(shapes) != 1:
        raise ValueError(f"correctness matrices differ in shape: {sorted(shapes)}")
    c = sum(float(w) * matrices[name] for name, w in weights.items())
    estimate = float(c.mean())
    se, df = two_way_se(c)
    per_seed = c.mean(axis=1)
    if se > 0:
        p = _t_p(estimate / se, df)
        p_tost = max(float(sps.t.sf((estimate + margin) / se, df)), float(sps.t.cdf((estimate - margin) / se, df)))
    else:
        p = p_tost = math.nan
    unjudged = Contrast(tuple((name, float(w)) for name, w in weights.items()), estimate, se, df, margin, alpha,
                        p, p, p_tost, Interval(math.nan, math.nan, 1 - alpha),
                        Interval(math.nan, math.nan, 1 - 2 * alpha), math.nan, INCONCLUSIVE,
                        tuple(float(x) for x in per_seed), sign_flip_p(per_seed), paired_t_p(per_seed), c.shape[1])
    return at_level(unjudged, alpha)


def judge_family(contrasts: Sequence[Contrast], alpha: float) -> list[Contrast]:
    """The contrasts judged together under Holm's step-down adjustment over this family only.

    Sort the m finite ps ascending; the first r with p_(k) < alpha / (m − k) (k = 0, 1, ...,
    stopping at the first failure) are real differences, judged at level alpha / (m − k). Every
    other contrast is judged at alpha / (m − r), the level at which the step-down stopped, so
    its interval includes 0 and equivalence is tested at that same level. Hence interval and
    verdict always agree, and a direction is called exactly when the Holm-adjusted p < alpha.
    These intervals are each at their verdict's level, not simultaneous intervals.
    """
    finite = sorted((i for i, c in enumerate(contrasts) if not math.isnan(c.p)), key=lambda i: contrasts[i].p)
    m = len(finite)
    rejected = 0
    while rejected < m and contrasts[finite[rejected]].p < alpha / (m - rejected):
        rejected += 1
    levels, adjusted = [alpha] * len(contrasts), [c.p for c in contrasts]
    running = 0.0
    for k, i in enumerate(finite):
        running = max(running, min(1.0, (m - k) * contrasts[i].p))
        adjusted[i] = running
        levels[i] = alpha / (m - min(k, rejected))
    return [at_level(c, level, p_adj) for c, level, p_adj in zip(contrasts, levels, adjusted)]


def reproduction(reference_accuracy: float, correct: np.ndarray, *, alpha: float) -> Reproduction:
    """Is ``reference_accuracy`` (one run, scored on these same test images) what one new run
    of this variant would give?

    A (1 − alpha) prediction interval for one run: mean ± t · sd_run · sqrt(1 + 1/S). The
    reference was scored on the same test images, so which images were drawn is shared and
    cancels; what varies from run to run is training (the seed) and which of these images a
    run gets right: sd_run² = max(MS_seed, MS_cell) / N, the seed-to-seed variance of accuracy
    floored by the image-level noise of one run, on S − 1 df (or the cell df when floored).
    """
    x = _matrix(correct)
    s, n = x.shape
    if s == 1:  # one seed: only the image-level noise of one run can be estimated
        sd_run, df = math.sqrt(float(np.var(x[0], ddof=1)) / n), float(n - 1)
    else:
        a, _, e = mean_squares(x)
        sd_run = math.sqrt(max(a, e) / n)
        df = float(s - 1 if a >= e else (s - 1) * (n - 1))
    mean = float(x.mean())
    scale = sd_run * math.sqrt(1 + 1 / s)
    half = float(sps.t.ppf(1 - alpha / 2, df)) * scale
    interval = Interval(mean - half, mean + half, 1 - alpha)
    ref = float(reference_accuracy)
    outside = ref - interval.high if ref > interval.high else ref - interval.low if ref < interval.low else 0.0
    p = _t_p((ref - mean) / scale, df) if scale > 0 else math.nan
    return Reproduction(ref, mean, sd_run, df, interval, outside, p)
