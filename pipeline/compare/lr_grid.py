"""Learning-rate sensitivity in the report: each variant's accuracy against the learning rate,
its best rate, and whether the study's ranking holds when every variant trains at its own best.

In: the learning-rate grid's runs (``pipeline.compare.runs.GridRun``: final validation and test metrics
and whether the training diverged) by variant, seed and rate.
Out: ``summary(runs)`` (a row per variant and rate: validation accuracy mean, min and max over
seeds, diverged seeds, test accuracy mean and std); ``best_rates(summary)`` (each variant's best
rate, chosen on validation metrics only); ``ranking(...)``; ``ranking_line(grid)`` (whether the ranking
changes, as far as the comparisons at the best rates show); ``figure(...)``; ``metrics(...)`` for
``reports/metrics.json``.

The best rate of a variant is chosen by ``pipeline.compare.choice.best_rates`` (the rule the ``choose``
stage applies): the highest mean validation accuracy over seeds among the rates at which no seed diverged
or collapsed; equal means go to the lower mean validation loss, then to the smaller rate. It never looks
at the test images: the test accuracy reported for it is read only after the choice. A best rate at the
grid's lowest or highest rate is flagged "extend the grid": the optimum may lie beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compare import conclusions, significance
from pipeline.compare.choice import (COLLAPSED_BELOW, SELECTION_COLUMNS, best_rates, edge, groups,  # noqa: F401
                                     is_collapsed, selection_row)
from pipeline.compare.runs import GridRun, fetch_grid, fetch_runs, read_records
from pipeline.compare.tables import markdown_table, plus_minus
from pipeline.core.figures import palette, pyplot, save
from pipeline.core.labels import run_label
from pipeline.core.params import Params


@dataclass(frozen=True)
class LrGrid:
    """The learning-rate sensitivity section (``section``)."""

    summary: pd.DataFrame        # summary
    best: dict                   # variant -> best rate (None: every rate diverged)
    at_best: pd.DataFrame        # variant, rate, n_seeds, test_accuracy_{mean,std}: read after the choice
    study_order: list[str]       # variants by test accuracy at the study's own rate
    best_order: list[str]        # variants by test accuracy, each at its best rate
    conclusions: list            # pipeline.compare.conclusions.Judgement at the best rates
    diverged: list[str]          # "plain-s0-lr0.3" for each diverged grid training
    collapsed: list[str]         # the same for each collapsed one (validation accuracy below COLLAPSED_BELOW)
    significance: pd.DataFrame   # the comparisons at the best rates (pipeline.compare.significance.comparisons)
    figure: str
    validation_images: int
    n_runs: int


def summary(runs: list[GridRun], variants: list[str]) -> pd.DataFrame:
    """A row per (variant, rate), variants in ``variants`` order, rates ascending: what the choice weighs
    (``choice.selection_row``), the validation accuracy's spread, and the test accuracy (read after)."""
    rows = []
    for variant, rate, group in groups(runs, variants):
        val = np.array([r.validation_accuracy for r in group], dtype=float)
        test = np.array([r.test_accuracy for r in group], dtype=float)
        rows.append({**selection_row(variant, rate, group),
                     "validation_accuracy_min": float(np.min(val)), "validation_accuracy_max": float(np.max(val)),
                     "test_accuracy_mean": float(np.mean(test)),
                     "test_accuracy_std": float(np.std(test, ddof=1)) if len(test) > 1 else float("nan")})
    return pd.DataFrame(rows, columns=[*SELECTION_COLUMNS, "validation_accuracy_min", "validation_accuracy_max",
                                       "test_accuracy_mean", "test_accuracy_std"])


def ranking(accuracy: dict[str, float]) -> list[str]:
    """Variants by mean test accuracy, best first (ties keep the given order)."""
    return sorted(accuracy, key=lambda v: -accuracy[v])


def reversals(study_order: list[str], best_order: list[str], tests: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Each pair whose order at the best rates is the reverse of the study's, as (now higher, now lower,
    the verdict of their comparison at the best rates; "not compared" when the tests lack the pair)."""
    study_rank = {variant: i for i, variant in enumerate(study_order)}
    out = []
    for i, high in enumerate(best_order):
        for low in best_order[i + 1:]:
            if high in study_rank and low in study_rank and study_rank[high] > study_rank[low]:
                rows = tests[tests["a"].isin([high, low]) & tests["b"].isin([high, low])] if len(tests) else tests
                out.append((high, low, rows["call"].iloc[0] if len(rows) else "not compared"))
    return out


def ranking_line(grid: "LrGrid") -> str:
    """Whether the ranking changes, said only as far as the comparisons at the best rates carry it."""
    if grid.study_order == grid.best_order:
        return "The ranking holds."
    pairs = reversals(grid.study_order, grid.best_order, grid.significance)
    told = "; ".join(f"{high} over {low} ({call})" for high, low, call in pairs)
    shown = [(high, low) for high, low, call in pairs if call == f"{high} better"]
    if shown:
        return (f"The means' order changes ({told}): the ranking changes, shown by "
                + ", ".join(f"{high} over {low}" for high, low in shown) + ".")
    return (f"The means' order changes ({told}), but no reversed pair is told apart at the best rates: "
            "a changed ranking is not shown.")


def rate_cell(row) -> str:
    """``0.9871 (0.9860–0.9880)``; ``diverged (3 of 3 seeds)``; ``0.95 (…); 1 of 3 seeds diverged``."""
    n, diverged = int(row["n_seeds"]), int(row["n_diverged"])
    if diverged == n:
        return f"diverged ({n} of {n} seed{'s' if n > 1 else ''})"
    text = f"{row['validation_accuracy_mean']:.4f}"
    if n > 1:
        text += f" ({row['validation_accuracy_min']:.4f}–{row['validation_accuracy_max']:.4f})"
    text += f"; {diverged} of {n} seeds diverged" if diverged else ""
    collapsed_seeds = int(row.get("n_collapsed", 0))
    return text + (f"; {collapsed_seeds} of {n} collapsed (near chance)" if collapsed_seeds else "")


def figure(table: pd.DataFrame, best: dict[str, float | None], path: Path, validation_images: int,
           colours: dict[str, str]) -> None:
    """Validation accuracy against the learning rate (log scale): per variant the mean over seeds with
    its min–max band, the best rate circled, diverged points as crosses on the floor."""
    fig, ax = pyplot().subplots(figsize=(8, 4.6))
    floor = 0.0
    for variant in dict.fromkeys(table["variant"]):
        rows = table[table["variant"] == variant].sort_values("rate")
        ok = rows[rows["n_diverged"] < rows["n_seeds"]]
        line, = ax.plot(ok["rate"], ok["validation_accuracy_mean"], marker="o", markersize=3, linewidth=1.4,
                        color=colours[variant],
                        label=f"{variant} (best {best[variant]:g})" if best.get(variant) else f"{variant} (no best)")
        ax.fill_between(ok["rate"], ok["validation_accuracy_min"], ok["validation_accuracy_max"],
                        color=line.get_color(), alpha=0.18)
        diverged = rows[rows["n_diverged"] > 0]
        ax.scatter(diverged["rate"], [floor] * len(diverged), marker="x", color=line.get_color(), zorder=3)
        if best.get(variant) is not None:
            chosen = rows[rows["rate"] == best[variant]]
            ax.scatter(chosen["rate"], chosen["validation_accuracy_mean"], s=90, facecolors="none",
                       edgecolors=line.get_color(), zorder=3)
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (SGD)", ylabel=f"accuracy on {validation_images:,} validation images",
           title="Learning-rate sensitivity (mean over seeds, min–max band; × = diverged, ○ = best)",
           ylim=(floor - 0.02, 1.0))
    ax.legend(fontsize=8, loc="lower left")
    save(fig, path)


def metrics(table: pd.DataFrame, best: dict[str, float | None]) -> dict:
    """``lr_grid``: per variant the best rate, validation and test accuracy there, and diverged runs."""
    out: dict = {}
    for variant, rate in best.items():
        rows = table[table["variant"] == variant]
        chosen = rows[rows["rate"] == rate]
        out[variant] = {
            "best_learning_rate": rate,
            "validation_accuracy_at_best": None if chosen.empty else round(float(chosen["validation_accuracy_mean"]
                                                                                  .iloc[0]), 6),
            "test_accuracy_at_best": None if chosen.empty else round(float(chosen["test_accuracy_mean"].iloc[0]), 6),
            "diverged_runs": int(rows["n_diverged"].sum()),
        }
    return {"lr_grid": out} if out else {}


def section(params: Params, results: Path, uri: str, table: pd.DataFrame, figures_dir: Path) -> LrGrid | None:
    """The learning-rate grid's section: each variant's best rate on the validation images, then (only
    then) the test accuracy there and the notebook's conclusions judged there; None without a grid."""
    rates = params.lr_grid.learning_rates
    if not rates:
        return None
    variants, seeds = list(params.variants), params.lr_grid.seeds
    records = read_records(variants, seeds, results, rates)
    grid = fetch_grid(records, uri)
    rates_table = summary(grid, variants)
    best = best_rates(rates_table)
    figure(rates_table, best, figures_dir / "learning_rates.png", params.lr_grid.validation_images,
           palette(params.variants))
    chosen = {variant: rate for variant, rate in best.items() if rate is not None}
    # The grid's metrics above were enough to choose; the comparisons at the chosen rates also need each
    # run's per-image predictions, so only those runs are read again, in full.
    best_records = {key: record for key, record in records.items() if chosen.get(key[0]) == float(key[2])}
    best_runs = {key[:2]: run for key, run in fetch_runs(best_records, uri).items()}
    at_best = rates_table.merge(pd.DataFrame({"variant": list(chosen), "rate": list(chosen.values())}))
    at_best = at_best[["variant", "rate", "n_seeds", "test_accuracy_mean", "test_accuracy_std"]]
    tests = significance.comparisons(best_runs, list(chosen), seeds, params.compare) if best_runs else pd.DataFrame()
    judgements = conclusions.judge_runs(best_runs, tests, params) if best_runs else []
    return LrGrid(rates_table, best, at_best, [v for v in table["variant"] if v in chosen],
                  ranking(dict(zip(at_best["variant"], at_best["test_accuracy_mean"]))), judgements,
                  [run_label(r.variant, r.seed, r.rate) for r in grid if r.diverged],
                  [run_label(r.variant, r.seed, r.rate) for r in grid if is_collapsed(r)], tests,
                  "learning_rates.png", params.lr_grid.validation_images, len(grid))


def grid_markdown(grid: LrGrid) -> str:
    """Rates as rows, variants as columns: validation accuracy (mean, min–max), the best in bold."""
    variants = list(dict.fromkeys(grid.summary["variant"]))
    rows = []
    for rate in sorted(set(grid.summary["rate"])):
        row = {"learning rate": f"{rate:g}"}
        for variant in variants:
            match = grid.summary[(grid.summary["variant"] == variant) & (grid.summary["rate"] == rate)]
            text = "–" if match.empty else rate_cell(match.iloc[0])
            row[variant] = f"**{text}**" if grid.best.get(variant) == rate else text
        rows.append(row)
    return markdown_table(pd.DataFrame(rows), right=set(variants) | {"learning rate"})


def best_markdown(grid: LrGrid, study: pd.DataFrame, study_rate: float) -> str:
    """Per variant: its best rate, the validation accuracy there, then the test accuracy there and in the study."""
    study_accuracy = {r.variant: plus_minus(r.test_accuracy_mean, r.test_accuracy_std, r.n_seeds)
                      for r in study.itertuples()}
    rows = []
    for variant, rate in grid.best.items():
        chosen = grid.at_best[grid.at_best["variant"] == variant]
        picked = grid.summary[(grid.summary["variant"] == variant) & (grid.summary["rate"] == rate)]
        rows.append({
            "variant": variant, "best rate": "every rate diverged" if rate is None else f"{rate:g}" + (
                f" (the grid's {end}: extend the grid)"
                if (end := edge(rate, list(grid.summary.loc[grid.summary["variant"] == variant, "rate"]))) else ""),
            "validation acc. there": "–" if picked.empty else f"{picked['validation_accuracy_mean'].iloc[0]:.4f}",
            "test acc. there": "–" if chosen.empty else plus_minus(chosen["test_accuracy_mean"].iloc[0],
                                                                  chosen["test_accuracy_std"].iloc[0],
                                                                  int(chosen["n_seeds"].iloc[0])),
            f"test acc. in the study (rate {study_rate:g})": study_accuracy.get(variant, "–"),
        })
    frame = pd.DataFrame(rows)
    return markdown_table(frame, right=set(frame.columns) - {"variant"})
