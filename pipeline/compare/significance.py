"""The report's "which differences are real" section: every compared pair, its tests and verdict.

In: the runs read back by (variant, seed), the variants and seeds, and ``compare`` from ``params.yaml``
(the pairs the notebook compared, the conclusions' pairs, the control, alpha).
Out: ``compared_pairs``, ``comparisons`` (a DataFrame, a row per pair: difference, McNemar per seed,
paired t across seeds, Holm-adjusted p, verdict) and ``markdown`` (that table for the report).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.compare import stats
from pipeline.compare.runs import RunData, RunKey
from pipeline.compare.tables import markdown_table, or_dash
from pipeline.core.params import CompareSettings

SIGNIFICANCE_COLUMNS = ["a", "b", "diff_pp", "only_a_right", "only_b_right", "mcnemar_p", "mcnemar_p_per_seed",
                        "seed_t_p", "test", "p", "p_holm", "verdict"]


def compared_pairs(variants: list[str], settings: CompareSettings) -> list[tuple[str, str]]:
    """Each pair the notebook compared and each pair its conclusions rest on (where both were trained),
    then every variant against the control; a pair is compared once, in its first orientation."""
    pairs: list[tuple[str, str]] = []
    claimed = [pair for conclusion in settings.conclusions for pair in conclusion.holds_if]
    for a, b in [*settings.pairs, *claimed]:
        if a in variants and b in variants and (a, b) not in pairs and (b, a) not in pairs:
            pairs.append((a, b))
    control = settings.control
    if control in variants:
        pairs += [(v, control) for v in variants if v != control and (v, control) not in pairs]
    return pairs


def comparisons(runs: dict[RunKey, RunData], variants: list[str], seeds: list[int],
                settings: CompareSettings) -> pd.DataFrame:
    """The significance table: a row per compared pair, with its test, Holm-adjusted p and verdict."""
    rows = []
    for a, b in compared_pairs(variants, settings):
        accuracy_a = [runs[(a, seed)].test_accuracy for seed in seeds]
        accuracy_b = [runs[(b, seed)].test_accuracy for seed in seeds]
        per_seed = [stats.mcnemar(runs[(a, seed)].correct, runs[(b, seed)].correct) for seed in seeds]
        mcnemar_p = max(test.p_value for test in per_seed)  # distinguishable only if every seed says so
        across_seeds = len(seeds) >= 3
        seed_t_p = stats.paired_t(accuracy_a, accuracy_b) if across_seeds else float("nan")
        rows.append({
            "a": a, "b": b, "diff_pp": 100 * (np.mean(accuracy_a) - np.mean(accuracy_b)),
            "only_a_right": int(np.mean([test.only_a for test in per_seed])),
            "only_b_right": int(np.mean([test.only_b for test in per_seed])),
            "mcnemar_p": mcnemar_p, "mcnemar_p_per_seed": " ".join(f"{test.p_value:.3g}" for test in per_seed),
            "seed_t_p": seed_t_p, "test": "paired t across seeds" if across_seeds else "McNemar (exact)",
            "p": seed_t_p if across_seeds else mcnemar_p,
        })
    table = pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS[:-2])
    table["p_holm"] = stats.holm(table["p"].tolist()) if rows else []
    table["verdict"] = [stats.verdict(r.a, r.b, r.diff_pp, r.p_holm, settings.alpha) for r in table.itertuples()]
    return table


def markdown(significance: pd.DataFrame) -> str:
    rows = pd.DataFrame({
        "comparison": significance["a"] + " vs " + significance["b"],
        "difference (pp)": significance["diff_pp"].map(lambda x: f"{x:+.2f}"),
        "A right, B wrong": significance["only_a_right"].map(str),
        "B right, A wrong": significance["only_b_right"].map(str),
        "McNemar p": significance["mcnemar_p_per_seed"],
        "seeds: paired t p": significance["seed_t_p"].map(lambda x: or_dash(x, ".2g")),
        "Holm-adjusted p": significance["p_holm"].map(lambda x: f"{x:.2g}"),
        "verdict": significance["verdict"].map(lambda v: v.split(" — ")[1]),
    })
    return markdown_table(rows, right={"difference (pp)", "A right, B wrong", "B right, A wrong", "seeds: paired t p",
                                       "Holm-adjusted p"})
