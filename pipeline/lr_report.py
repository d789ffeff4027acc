"""Learning-rate sensitivity in the report: each variant's accuracy against the learning rate,
its best rate, and whether the study's ranking holds when every variant trains at its own best.

In: the learning-rate grid's runs (``pipeline.runs.GridRun``: final validation and test metrics
and whether the training diverged) by variant, seed and rate.
Out: ``summary(runs)`` (a row per variant and rate: validation accuracy mean, min and max over
seeds, diverged seeds, test accuracy mean and std); ``best_rates(summary)`` (each variant's best
rate, chosen on validation metrics only); ``ranking(...)``; ``figure(...)``; ``metrics(...)`` for
``reports/metrics.json``.

The best rate of a variant is the one with the highest mean validation accuracy over seeds among
the rates at which no seed diverged; equal means go to the lower mean validation loss, then to
the smaller rate, so the choice is the same every time. It never looks at the test images: the
test accuracy reported for it is read only after the choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.runs import GridRun

SELECTION_COLUMNS = ("variant", "rate", "n_seeds", "n_diverged", "validation_accuracy_mean", "validation_loss_mean")


def summary(runs: list[GridRun], variants: list[str]) -> pd.DataFrame:
    """A row per (variant, rate), variants in ``variants`` order, rates ascending."""
    rows = []
    for variant in variants:
        for rate in sorted({r.rate for r in runs if r.variant == variant}):
            group = [r for r in runs if r.variant == variant and r.rate == rate]
            val = np.array([r.validation_accuracy for r in group], dtype=float)
            test = np.array([r.test_accuracy for r in group], dtype=float)
            rows.append({
                "variant": variant, "rate": rate, "n_seeds": len(group),
                "n_diverged": sum(r.diverged for r in group),
                "validation_accuracy_mean": float(np.mean(val)), "validation_accuracy_min": float(np.min(val)),
                "validation_accuracy_max": float(np.max(val)),
                "validation_loss_mean": float(np.mean([r.validation_loss for r in group])),
                "test_accuracy_mean": float(np.mean(test)),
                "test_accuracy_std": float(np.std(test, ddof=1)) if len(test) > 1 else float("nan"),
            })
    return pd.DataFrame(rows, columns=[*SELECTION_COLUMNS, "validation_accuracy_min", "validation_accuracy_max",
                                       "test_accuracy_mean", "test_accuracy_std"])


def best_rates(table: pd.DataFrame) -> dict[str, float | None]:
    """Each variant's best learning rate on the validation images (None when every rate diverged).

    Reads only ``SELECTION_COLUMNS``: the test metrics cannot sway the choice.
    """
    table = table.loc[:, list(SELECTION_COLUMNS)]
    best: dict[str, float | None] = {}
    for variant in dict.fromkeys(table["variant"]):
        candidates = table[(table["variant"] == variant) & (table["n_diverged"] == 0)]
        if candidates.empty:
            best[variant] = None
            continue
        ordered = candidates.sort_values(["validation_accuracy_mean", "validation_loss_mean", "rate"],
                                         ascending=[False, True, True], kind="stable")
        best[variant] = float(ordered.iloc[0]["rate"])
    return best


def ranking(accuracy: dict[str, float]) -> list[str]:
    """Variants by mean test accuracy, best first (ties keep the given order)."""
    return sorted(accuracy, key=lambda v: -accuracy[v])


def cell(row) -> str:
    """``0.9871 (0.9860–0.9880)``; ``diverged (3 of 3 seeds)``; ``0.95 (…); 1 of 3 seeds diverged``."""
    n, diverged = int(row["n_seeds"]), int(row["n_diverged"])
    if diverged == n:
        return f"diverged ({n} of {n} seed{'s' if n > 1 else ''})"
    text = f"{row['validation_accuracy_mean']:.4f}"
    if n > 1:
        text += f" ({row['validation_accuracy_min']:.4f}–{row['validation_accuracy_max']:.4f})"
    return text + (f"; {diverged} of {n} seeds diverged" if diverged else "")


def figure(table: pd.DataFrame, best: dict[str, float | None], path: Path, validation_images: int) -> None:
    """Validation accuracy against the learning rate (log scale): per variant the mean over seeds with
    its min–max band, the best rate circled, diverged points as crosses on the floor."""
    from pipeline.figures import plt, save

    fig, ax = plt.subplots(figsize=(8, 4.6))
    floor = 0.0
    for variant in dict.fromkeys(table["variant"]):
        rows = table[table["variant"] == variant].sort_values("rate")
        ok = rows[rows["n_diverged"] < rows["n_seeds"]]
        line, = ax.plot(ok["rate"], ok["validation_accuracy_mean"], marker="o", markersize=3, linewidth=1.4,
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
