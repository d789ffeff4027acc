"""The report's "which differences are real" section: every compared pair and interaction, judged with
uncertainty from both training (seeds) and which test images were drawn.

In: the runs read back by (variant, seed) (each with its per-image correctness), the variants and
seeds, and ``compare`` from ``params.yaml``: the pairs the notebook compared, the conclusions' pairs,
the control, the interactions, ``alpha`` and ``equivalence_margin``.
Out: ``families`` (the confirmatory family: the pairs the conclusions rest on and the interactions;
the exploratory family: every other compared pair), ``comparisons`` (a DataFrame, a row per
comparison, each family Holm-adjusted on its own: difference, interval at the level its verdict
used, p, exact sign-flip and paired-t across seeds, TOST p, minimum detectable effect, McNemar per
seed, verdict) and ``markdown`` (that table for the report). The statistics are
``pipeline.compare.evidence``'s.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.compare import evidence, stats
from pipeline.compare.runs import RunData, RunKey
from pipeline.compare.tables import markdown_table, or_dash
from pipeline.core.params import CompareSettings

CONFIRMATORY, EXPLORATORY = "confirmatory", "exploratory"
COLUMNS = ["family", "comparison", "a", "b", "diff_pp", "low_pp", "high_pp", "confidence", "p", "p_holm",
           "p_sign_flip", "p_seed_t", "p_tost", "mde_pp", "only_a_right", "only_b_right", "mcnemar_p_per_seed",
           "verdict", "call"]


def _trained_pairs(candidates, variants: list[str], seen: list) -> list[tuple[str, str]]:
    out = []
    for a, b in candidates:
        if a in variants and b in variants and {(a, b), (b, a)}.isdisjoint(seen + out):
            out.append((a, b))
    return out


def families(variants: list[str], settings: CompareSettings) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The pairs the conclusions rest on (confirmatory), then the notebook's other pairs and every variant
    against the control (exploratory); a pair is compared once, in its first orientation, where both
    variants were trained."""
    confirmatory = _trained_pairs([p for c in settings.conclusions for p in c.holds_if], variants, [])
    candidates = list(settings.pairs)
    if settings.control in variants:
        candidates += [(v, settings.control) for v in variants if v != settings.control]
    return confirmatory, _trained_pairs(candidates, variants, confirmatory)


def compared_pairs(variants: list[str], settings: CompareSettings) -> list[tuple[str, str]]:
    confirmatory, exploratory = families(variants, settings)
    return confirmatory + exploratory


def correctness(runs: dict[RunKey, RunData], variants: list[str], seeds: list[int]) -> dict[str, np.ndarray]:
    """Per variant, the (seeds × test images) correctness matrix, seeds in ``seeds`` order."""
    return {v: np.vstack([runs[(v, s)].correct for s in seeds]) for v in variants if all((v, s) in runs for s in seeds)}


def _mcnemar(runs: dict[RunKey, RunData], a: str, b: str, seeds: list[int]) -> dict:
    per_seed = [stats.mcnemar(runs[(a, s)].correct, runs[(b, s)].correct) for s in seeds]
    return {"only_a_right": int(round(np.mean([t.only_a for t in per_seed]))),
            "only_b_right": int(round(np.mean([t.only_b for t in per_seed]))),
            "mcnemar_p_per_seed": " ".join(f"{t.p_value:.3g}" for t in per_seed)}


def call(row_verdict: str, a: str, b: str) -> str:
    """A verdict in words: ``bn_hidden better``, ``equivalent``, ``inconclusive`` (for an interaction,
    ``positive``/``negative``)."""
    if not b:
        return row_verdict
    return {evidence.POSITIVE: f"{a} better", evidence.NEGATIVE: f"{b} better"}.get(row_verdict, row_verdict)


def _row(family: str, label: str, a: str, b: str, c: evidence.Contrast) -> dict:
    return {"family": family, "comparison": label, "a": a, "b": b, "diff_pp": 100 * c.estimate,
            "low_pp": 100 * c.interval.low, "high_pp": 100 * c.interval.high, "confidence": c.interval.confidence,
            "p": c.p, "p_holm": c.p_adjusted, "p_sign_flip": c.p_sign_flip, "p_seed_t": c.p_paired_t,
            "p_tost": c.p_tost, "mde_pp": 100 * c.mde, "verdict": c.verdict, "call": call(c.verdict, a, b)}


def _family(name: str, items: list[tuple[str, str, str, dict]], correct: dict, settings: CompareSettings) -> list[dict]:
    """Each (label, a, b, weights) as a contrast, Holm-judged over this family only."""
    contrasts = [evidence.contrast(correct, weights, margin=settings.equivalence_margin, alpha=settings.alpha)
                 for _, _, _, weights in items]
    judged = evidence.judge_family(contrasts, settings.alpha)
    return [_row(name, label, a, b, c) for (label, a, b, _), c in zip(items, judged)]


def _pair(a: str, b: str) -> tuple[str, str, str, dict]:
    return f"{a} vs {b}", a, b, {a: 1.0, b: -1.0}


def comparisons(runs: dict[RunKey, RunData], variants: list[str], seeds: list[int],
                settings: CompareSettings) -> pd.DataFrame:
    """The significance table: the confirmatory family first, then the exploratory one."""
    correct = correctness(runs, variants, seeds)
    confirmatory, exploratory = families(list(correct), settings)
    interactions = [(i.label(), "", "", i.weights()) for i in settings.interactions if set(i.weights()) <= set(correct)]
    rows = (_family(CONFIRMATORY, [_pair(a, b) for a, b in confirmatory] + interactions, correct, settings)
            + _family(EXPLORATORY, [_pair(a, b) for a, b in exploratory], correct, settings))
    for row in rows:
        row.update(_mcnemar(runs, row["a"], row["b"], seeds) if row["b"] else
                   {"only_a_right": np.nan, "only_b_right": np.nan, "mcnemar_p_per_seed": ""})
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_line(row) -> str:
    """``bn_hidden vs bn_all: -0.02 pp (95.0% interval -0.07 to +0.03 pp), Holm p = 0.4 — equivalent``."""
    return (f"{row.comparison}: {row.diff_pp:+.2f} pp ({100 * row.confidence:.1f}% interval {row.low_pp:+.2f} to "
            f"{row.high_pp:+.2f} pp), Holm p = {or_dash(row.p_holm, '.2g')} — {row.call}"
            + (f" (smallest difference this study detects with 80% power: {row.mde_pp:.2f} pp)"
               if row.verdict == evidence.INCONCLUSIVE else ""))


def markdown(table: pd.DataFrame, family: str) -> str:
    rows = table[table["family"] == family]
    frame = pd.DataFrame({
        "comparison": rows["comparison"],
        "difference (pp)": rows["diff_pp"].map(lambda x: f"{x:+.2f}"),
        "interval (pp)": [f"{r.low_pp:+.2f} to {r.high_pp:+.2f} ({100 * r.confidence:.1f}%)" for r in rows.itertuples()],
        "A right, B wrong": rows["only_a_right"].map(lambda x: or_dash(x, ".0f")),
        "B right, A wrong": rows["only_b_right"].map(lambda x: or_dash(x, ".0f")),
        "p": rows["p"].map(lambda x: or_dash(x, ".2g")),
        "Holm p": rows["p_holm"].map(lambda x: or_dash(x, ".2g")),
        "sign-flip p (exact)": rows["p_sign_flip"].map(lambda x: or_dash(x, ".2g")),
        "seeds-only t p": rows["p_seed_t"].map(lambda x: or_dash(x, ".2g")),
        "TOST p": rows["p_tost"].map(lambda x: or_dash(x, ".2g")),
        "detectable (pp)": rows["mde_pp"].map(lambda x: or_dash(x, ".2f")),
        "verdict": rows["call"],
    })
    return markdown_table(frame, right=set(frame.columns) - {"comparison", "interval (pp)", "verdict"})
