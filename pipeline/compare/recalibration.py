"""Li et al.'s causal check, read back: each batch-norm network tested with the moving statistics
training left, and again after they were re-estimated with dropout off (``pipeline.measures.recalibrate``).

In: the runs with diagnostics by variant (``RunData.diagnostics["recalibrated_correct"]``: the test
images' correctness after re-estimation; ``summary["recalibration"]``), the dropout counterparts
(``pipeline.compare.diagnostics.dropout_counterparts``), the level and the equivalence margin.
Out: ``section(...)`` returns a ``Recalibration`` per variant every seed of which was re-estimated
(the change after − before as an ``evidence.Contrast``: seeds and test images both sampled, Holm
over the variants) and a ``Gap`` per (with dropout, without) pair: the difference before and after
re-estimation. Variants without dropout are the control: re-estimation should change little there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.compare import evidence
from pipeline.compare.tables import markdown_table, or_dash

AFTER = "{}, re-estimated"  # the name the re-estimated networks go by inside a contrast
WORDS = {evidence.POSITIVE: "recovers accuracy", evidence.NEGATIVE: "loses accuracy",
         evidence.EQUIVALENT: "no change (equivalent)", evidence.INCONCLUSIVE: "inconclusive"}


@dataclass(frozen=True)
class Recalibration:
    variant: str
    seeds: tuple[int, ...]
    images: int                   # training images the statistics were re-estimated on
    before: float                 # mean test accuracy over seeds
    after: float
    change: evidence.Contrast     # after − before
    coadaptation_before: float
    coadaptation_after: float


@dataclass(frozen=True)
class Gap:
    with_dropout: str
    without: str
    before: evidence.Contrast     # with dropout − without, as trained
    after: evidence.Contrast      # with dropout (re-estimated) − without


def _matrices(by_variant: dict[str, list]) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Correctness (seeds × images) as trained and, for variants re-estimated on every seed, after."""
    correct, recalibrated = {}, {}
    for variant, runs in by_variant.items():
        correct[variant] = np.stack([r.correct for r in runs])
        if all("recalibrated_correct" in r.diagnostics for r in runs):
            correct[AFTER.format(variant)] = np.stack([r.diagnostics["recalibrated_correct"] for r in runs])
            recalibrated[variant] = runs
    return correct, recalibrated


def _row(variant: str, runs: list, correct: dict, change: evidence.Contrast) -> Recalibration:
    summaries = [r.diagnostics["summary"].get("recalibration", {}) for r in runs]
    coad = [r.diagnostics["summary"].get("coadaptation_fc1", np.nan) for r in runs]
    return Recalibration(variant, tuple(r.seed for r in runs), int(summaries[0].get("images", 0)),
                         float(correct[variant].mean()), float(correct[AFTER.format(variant)].mean()), change,
                         float(np.nanmean(coad)) if coad else np.nan,
                         float(np.nanmean([s.get("coadaptation_fc1", np.nan) for s in summaries])))


def section(by_variant: dict[str, list], counterparts: list[tuple[str, str]], *, alpha: float, margin: float
            ) -> tuple[list[Recalibration], list[Gap]]:
    """The re-estimated variants' changes (one Holm family) and the dropout gaps before and after."""
    if not any("recalibrated_correct" in r.diagnostics for runs in by_variant.values() for r in runs):
        return [], []
    by_variant = {v: runs for v, runs in by_variant.items()
                  if len({len(r.correct) for r in runs}) == 1}  # one test set per variant
    correct, recalibrated = _matrices(by_variant)
    if not recalibrated:
        return [], []
    seeds = {v: [r.seed for r in runs] for v, runs in by_variant.items()}
    changes = evidence.judge_family([evidence.contrast(correct, {AFTER.format(v): 1, v: -1}, margin=margin,
                                                       alpha=alpha) for v in recalibrated], alpha)
    rows = [_row(v, runs, correct, change) for (v, runs), change in zip(recalibrated.items(), changes)]
    gaps = [Gap(a, b, evidence.contrast(correct, {a: 1, b: -1}, margin=margin, alpha=alpha),
                evidence.contrast(correct, {AFTER.format(a): 1, b: -1}, margin=margin, alpha=alpha))
            for a, b in counterparts if a in recalibrated and b in correct and seeds[a] == seeds[b]]
    return rows, gaps


def metrics(rows: list[Recalibration], gaps: list[Gap]) -> dict:
    def numbers(c: evidence.Contrast) -> dict:
        return {"difference": round(c.estimate, 6), "low": round(c.interval.low, 6),
                "high": round(c.interval.high, 6), "verdict": c.verdict}

    return {"recalibration": {r.variant: {"before": round(r.before, 6), "after": round(r.after, 6),
                                          **numbers(r.change)} for r in rows},
            "recalibration_gaps": {f"{g.with_dropout} - {g.without}": {"before": numbers(g.before),
                                                                       "after": numbers(g.after)} for g in gaps}}


def pp(c: evidence.Contrast) -> str:
    """``+1.23 pp (+0.80 to +1.66)``: the estimate and its interval, in percentage points."""
    return f"{100 * c.estimate:+.2f} pp ({100 * c.interval.low:+.2f} to {100 * c.interval.high:+.2f})"


def table(rows: list[Recalibration]) -> str:
    import pandas as pd

    frame = pd.DataFrame([{
        "variant": r.variant, "seeds": len(r.seeds), "test accuracy as trained": f"{r.before:.4f}",
        "after re-estimation": f"{r.after:.4f}", "change, interval": pp(r.change),
        "verdict": WORDS[r.change.verdict],
        "co-adaptation fc1: as trained → after": f"{or_dash(r.coadaptation_before)} → {or_dash(r.coadaptation_after)}",
    } for r in rows])
    return markdown_table(frame, right={"seeds", "test accuracy as trained", "after re-estimation"})


def gap_line(gap: Gap) -> str:
    words = {evidence.POSITIVE: f"{gap.with_dropout} better", evidence.NEGATIVE: f"{gap.without} better",
             evidence.EQUIVALENT: "equivalent", evidence.INCONCLUSIVE: "inconclusive"}

    def said(c: evidence.Contrast) -> str:
        return f"{pp(c)}, {words[c.verdict]}"

    recovered = 1 - gap.after.estimate / gap.before.estimate if gap.before.estimate < 0 else float("nan")
    share = (f"; re-estimation closes {100 * recovered:.0f}% of the gap" if np.isfinite(recovered) else "")
    return (f"`{gap.with_dropout}` − `{gap.without}`: as trained {said(gap.before)}; "
            f"after re-estimation {said(gap.after)}{share}.")
