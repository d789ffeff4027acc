"""The notebook's conclusions, judged on the study's runs.

In: the claims (``compare.conclusions``: a sentence and the ``[a, b]`` pairs that make it true,
"a has the higher test accuracy"), the significance table of ``pipeline.compare.stage.comparisons``
(a row per compared pair: ``diff_pp``, ``test``, ``p_holm``) and each variant's test accuracy
per seed, in the same seed order for every variant.
Out: ``judge(...)`` returns a ``Judgement`` per claim. Each pair the claim rests on gets its
evidence (the difference a − b in percentage points, its interval across seeds, the test and its
Holm-adjusted p) and a call: ``holds`` when the difference is real (p < alpha) in the claimed
direction, ``reversed`` when it is real the other way, ``not distinguishable`` otherwise. The claim
holds when every pair holds, is reversed when any pair is reversed, and is not distinguishable
otherwise; it is ``not tested`` when a variant it names was not trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.compare import stats
from pipeline.compare.runs import RunData, RunKey
from pipeline.core.params import Conclusion, Params

HOLDS, REVERSED, UNCLEAR, UNTESTED = "holds", "reversed", "not distinguishable", "not tested"
# reports/metrics.json and the MLflow summary run hold a number per verdict
VERDICT_CODES = {HOLDS: 1, UNCLEAR: 0, REVERSED: -1}


@dataclass(frozen=True)
class PairEvidence:
    better: str          # the variant the claim says is better
    worse: str
    diff_pp: float       # mean test accuracy of better − worse, percentage points
    low_pp: float        # interval of that difference across seeds (equal to diff_pp with one seed)
    high_pp: float
    n_seeds: int
    test: str
    p_holm: float
    call: str


@dataclass(frozen=True)
class Judgement:
    claim: str
    verdict: str
    pairs: tuple[PairEvidence, ...] = ()
    missing: tuple[str, ...] = ()   # variants the claim names that were not trained


def pair_call(diff_pp: float, p: float, alpha: float) -> str:
    """Whether one "better beats worse" holds, is reversed, or cannot be told from noise."""
    if math.isnan(p) or p >= alpha or diff_pp == 0:
        return UNCLEAR
    return HOLDS if diff_pp > 0 else REVERSED


def claim_verdict(calls: list[str]) -> str:
    if REVERSED in calls:
        return REVERSED
    return HOLDS if calls and all(call == HOLDS for call in calls) else UNCLEAR


def _row(significance: pd.DataFrame, better: str, worse: str) -> tuple[pd.Series, int]:
    """The significance row of the pair, and +1 if it reads better − worse, −1 if worse − better."""
    for a, b, sign in ((better, worse, 1), (worse, better, -1)):
        match = significance[(significance["a"] == a) & (significance["b"] == b)]
        if len(match):
            return match.iloc[0], sign
    raise KeyError(f"{better} vs {worse} is not in the significance table")


def evidence(better: str, worse: str, significance: pd.DataFrame, accuracy: dict[str, list[float]],
             alpha: float, confidence: float) -> PairEvidence:
    row, sign = _row(significance, better, worse)
    diffs = 100 * (np.asarray(accuracy[better]) - np.asarray(accuracy[worse]))
    low, high = stats.t_interval(list(diffs), confidence)
    diff_pp = sign * float(row["diff_pp"])
    return PairEvidence(better, worse, diff_pp, low, high, len(diffs), str(row["test"]), float(row["p_holm"]),
                        pair_call(diff_pp, float(row["p_holm"]), alpha))


def judge(conclusions: list[Conclusion], significance: pd.DataFrame, accuracy: dict[str, list[float]],
          alpha: float, confidence: float) -> list[Judgement]:
    """A judgement per claim, in the order of ``compare.conclusions``."""
    judgements = []
    for conclusion in conclusions:
        named = {variant for pair in conclusion.holds_if for variant in pair}
        missing = tuple(sorted(named - set(accuracy)))
        if missing:
            judgements.append(Judgement(conclusion.claim, UNTESTED, missing=missing))
            continue
        pairs = tuple(evidence(a, b, significance, accuracy, alpha, confidence) for a, b in conclusion.holds_if)
        judgements.append(Judgement(conclusion.claim, claim_verdict([p.call for p in pairs]), pairs))
    return judgements


def metrics(judgements: list[Judgement]) -> dict[str, dict[str, float]]:
    """``conclusion_<n>``: the verdict as a number (1 holds, 0 not distinguishable, −1 reversed) and the
    smallest difference in the claimed direction (pp), for ``dvc metrics`` and MLflow."""
    out = {}
    for n, judgement in enumerate(judgements, start=1):
        if judgement.verdict == UNTESTED:
            continue
        out[f"conclusion_{n}"] = {"verdict": VERDICT_CODES[judgement.verdict],
                                  "min_diff_pp": round(min(p.diff_pp for p in judgement.pairs), 4)}
    return out


def judge_runs(runs: dict[RunKey, RunData], significance: pd.DataFrame, params: Params
                      ) -> list[Judgement]:
    """The notebook's conclusions (``compare.conclusions``) against the study's runs."""
    accuracy: dict[str, list[float]] = {}
    for (variant, _), run in sorted(runs.items()):
        accuracy.setdefault(variant, []).append(run.test_accuracy)
    settings = params.compare
    return judge(settings.conclusions, significance, accuracy, settings.alpha, settings.confidence)


def pair_evidence(pair) -> str:
    """One line of evidence: ``bn_hidden − dropout: +5.61 pp (95% interval across 3 seeds …), Holm p = …``."""
    if pair.n_seeds > 1:
        spread = f"interval across {pair.n_seeds} seeds {pair.low_pp:+.2f} to {pair.high_pp:+.2f} pp"
    else:
        spread = "one seed: no interval across seeds"
    return (f"{pair.better} − {pair.worse}: {pair.diff_pp:+.2f} pp ({spread}); {pair.test}, "
            f"Holm-adjusted p = {pair.p_holm:.2g}: {pair.call}")
