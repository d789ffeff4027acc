"""The notebook's conclusions, judged on the study's runs with the same statistics as every comparison.

In: the claims (``compare.conclusions``: a sentence and the ``[a, b]`` pairs that make it true,
"a has the higher test accuracy") and the significance table of
``pipeline.compare.significance.comparisons`` (a row per compared pair: difference, interval at the
level its verdict used, Holm-adjusted p within the confirmatory family, TOST, minimum detectable
effect, verdict).
Out: ``judge(...)`` returns a ``Judgement`` per claim. Each pair the claim rests on gets its evidence
and a call in the report's four words: ``holds`` (a real difference in the claimed direction),
``reversed`` (real, the other way), ``equivalent`` (within ``compare.equivalence_margin`` by two
one-sided tests: evidence of no meaningful difference) or ``inconclusive`` (this study cannot tell;
the smallest difference it could have detected is given). The claim holds when every pair holds; it is
reversed when any pair is reversed; otherwise it does not hold and its verdict says why: ``equivalent``
when a pair it needs is equivalent (and none is inconclusive), else ``inconclusive``. It is
``not tested`` when a variant it names was not trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from pipeline.compare import evidence
from pipeline.compare.runs import RunData, RunKey
from pipeline.core.params import Conclusion, Params

HOLDS, REVERSED, EQUIVALENT, INCONCLUSIVE, UNTESTED = ("holds", "reversed", evidence.EQUIVALENT,
                                                       evidence.INCONCLUSIVE, "not tested")
# reports/metrics.json and the MLflow summary run hold a number per verdict (the words are tags)
VERDICT_CODES = {HOLDS: 1, EQUIVALENT: 0, INCONCLUSIVE: 0, REVERSED: -1}


@dataclass(frozen=True)
class PairEvidence:
    better: str          # the variant the claim says is better
    worse: str
    diff_pp: float       # mean test accuracy of better − worse, percentage points
    low_pp: float        # its interval (seeds and test images), at the level the verdict used
    high_pp: float
    confidence: float
    p_holm: float        # Holm-adjusted within the confirmatory family
    p_sign_flip: float   # exact, across seeds only
    mde_pp: float        # smallest difference this study detects with 80% power
    call: str


@dataclass(frozen=True)
class Judgement:
    claim: str
    verdict: str
    pairs: tuple[PairEvidence, ...] = ()
    missing: tuple[str, ...] = ()   # variants the claim names that were not trained

    @property
    def rests_on_equivalence(self) -> bool:
        return any(p.call == EQUIVALENT for p in self.pairs)


def pair_call(verdict: str, sign: int) -> str:
    """The significance verdict of ``a − b`` read for the claim ``better − worse`` (``sign`` −1: flipped)."""
    if verdict in (evidence.POSITIVE, evidence.NEGATIVE):
        return HOLDS if (verdict == evidence.POSITIVE) == (sign > 0) else REVERSED
    return verdict


def claim_verdict(calls: list[str]) -> str:
    if REVERSED in calls:
        return REVERSED
    if calls and all(call == HOLDS for call in calls):
        return HOLDS
    return INCONCLUSIVE if INCONCLUSIVE in calls or not calls else EQUIVALENT


def _row(significance: pd.DataFrame, better: str, worse: str) -> tuple[pd.Series, int]:
    """The significance row of the pair, and +1 if it reads better − worse, −1 if worse − better."""
    for a, b, sign in ((better, worse, 1), (worse, better, -1)):
        match = significance[(significance["a"] == a) & (significance["b"] == b)]
        if len(match):
            return match.iloc[0], sign
    raise KeyError(f"{better} vs {worse} is not in the significance table")


def evidence_for(better: str, worse: str, significance: pd.DataFrame) -> PairEvidence:
    row, sign = _row(significance, better, worse)
    low, high = sorted((sign * float(row["low_pp"]), sign * float(row["high_pp"])))
    return PairEvidence(better, worse, sign * float(row["diff_pp"]), low, high, float(row["confidence"]),
                        float(row["p_holm"]), float(row["p_sign_flip"]), float(row["mde_pp"]),
                        pair_call(str(row["verdict"]), sign))


def judge(conclusions: list[Conclusion], significance: pd.DataFrame, trained: set[str]) -> list[Judgement]:
    """A judgement per claim, in the order of ``compare.conclusions``."""
    judgements = []
    for conclusion in conclusions:
        named = {variant for pair in conclusion.holds_if for variant in pair}
        missing = tuple(sorted(named - trained))
        if missing:
            judgements.append(Judgement(conclusion.claim, UNTESTED, missing=missing))
            continue
        pairs = tuple(evidence_for(a, b, significance) for a, b in conclusion.holds_if)
        judgements.append(Judgement(conclusion.claim, claim_verdict([p.call for p in pairs]), pairs))
    return judgements


def metrics(judgements: list[Judgement]) -> dict[str, dict[str, float]]:
    """``conclusion_<n>``: the verdict as a number (1 holds, 0 equivalent or inconclusive, −1 reversed), whether
    it rests on an equivalence, and the smallest difference in the claimed direction (pp), for ``dvc metrics``."""
    out = {}
    for n, judgement in enumerate(judgements, start=1):
        if judgement.verdict == UNTESTED:
            continue
        out[f"conclusion_{n}"] = {"verdict": VERDICT_CODES[judgement.verdict],
                                  "equivalent": int(judgement.verdict == EQUIVALENT),
                                  "min_diff_pp": round(min(p.diff_pp for p in judgement.pairs), 4)}
    return out


def judge_runs(runs: dict[RunKey, RunData], significance: pd.DataFrame, params: Params) -> list[Judgement]:
    """The notebook's conclusions (``compare.conclusions``) against the study's runs."""
    return judge(params.compare.conclusions, significance, {variant for variant, _ in runs})


def pair_evidence(pair: PairEvidence) -> str:
    """One line of evidence: ``bn_hidden − dropout: +6.59 pp (97.5% interval +6.3 to +6.9 pp), Holm p = …: holds``."""
    detect = (f"; the smallest difference this study could detect is {pair.mde_pp:.2f} pp"
              if pair.call == INCONCLUSIVE and not math.isnan(pair.mde_pp) else "")
    return (f"{pair.better} − {pair.worse}: {pair.diff_pp:+.2f} pp ({100 * pair.confidence:.1f}% interval "
            f"{pair.low_pp:+.2f} to {pair.high_pp:+.2f} pp, seeds and test images), Holm p = {pair.p_holm:.2g}, "
            f"exact sign-flip p across seeds = {pair.p_sign_flip:.2g}: **{pair.call}**{detect}")
