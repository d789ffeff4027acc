"""The report's figures: curves, bars and panels over variants, a colour per variant throughout.

In: tidy tables already computed by the report's sections, ``colours`` (``pipeline.core.figures.palette``
of the study's variants) and an output path.
Out: PNG files, each saying what it shows, which seeds and what its bands mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.figures import NOTEBOOK_COLOUR, pyplot, save


def learning_curves(curves, path: Path, colours: dict[str, str]) -> None:
    """Test accuracy and loss per epoch; a line per variant (mean over seeds), band = min..max."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("test_accuracy", "test_loss")):
        for variant, group in curves.groupby("variant", sort=False):
            agg = group.groupby("epoch")[metric].agg(["mean", "min", "max"])
            line, = ax.plot(agg.index, agg["mean"], marker="o", ms=3, label=variant, color=colours[variant])
            if group["seed"].nunique() > 1:
                ax.fill_between(agg.index, agg["min"], agg["max"], color=line.get_color(), alpha=0.2)
        seeds = ", ".join(map(str, sorted(curves["seed"].unique())))
        ax.set(xlabel="epoch", ylabel=metric.replace("_", " "),
               title=f"{metric.replace('_', ' ')} per epoch (mean over seeds {seeds}; band: min–max)")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def accuracy_bars(table, path: Path, colours: dict[str, str], interval: str) -> None:
    """Final test accuracy per variant with its interval (``interval`` says which); the notebook's single run
    as a marker."""
    fig, ax = pyplot().subplots(figsize=(8, 3.8))
    x = np.arange(len(table))
    mean = table["test_accuracy_mean"].to_numpy()
    err = np.vstack([mean - table["accuracy_ci_low"].to_numpy(), table["accuracy_ci_high"].to_numpy() - mean])
    ax.bar(x, mean, color=[colours[v] for v in table["variant"]], alpha=0.6, label="this study (mean over seeds)")
    ax.errorbar(x, mean, yerr=err, fmt="none", ecolor="black", capsize=4, label=interval)
    ref = table["notebook_accuracy"].to_numpy(dtype=float)
    ax.scatter(x[~np.isnan(ref)], ref[~np.isnan(ref)], marker="D", color=NOTEBOOK_COLOUR, zorder=3, label="notebook (2019)")
    low = np.nanmin(np.concatenate([table["accuracy_ci_low"].to_numpy(), ref]))
    ax.set_ylim(max(0.0, low - 0.02), min(1.0, float(np.nanmax(table["accuracy_ci_high"])) + 0.01))
    ax.set_xticks(x, table["variant"])
    ax.set(xlabel="variant", ylabel="test accuracy (fraction of the test images)",
           title="Final test accuracy per variant: mean over seeds, bars the interval (seeds and test images)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def covariate_shift_grid(histories: dict, points: list[str], path: Path, colours: dict[str, str],
                         settled_step: int, title: str = "") -> None:
    """p15/p50/p85 of each tanh input over training; rows = points, columns = variants.

    ``histories`` maps variant -> DataFrame with a ``step`` column and ``<point>.p15`` … columns.
    """
    variants = list(histories)
    fig, axes = pyplot().subplots(len(points), len(variants), figsize=(2.6 * len(variants), 1.9 * len(points)),
                             squeeze=False, sharex=True)
    for col, variant in enumerate(variants):
        df = histories[variant]
        for row, point in enumerate(points):
            ax = axes[row, col]
            if f"{point}.p50" in df:
                ax.fill_between(df["step"], df[f"{point}.p15"], df[f"{point}.p85"], alpha=0.3, color=colours[variant])
                ax.plot(df["step"], df[f"{point}.p50"], lw=1.2, color=colours[variant])
            ax.axvspan(0, settled_step, color="grey", alpha=0.12, lw=0)
            ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(variant, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{point} input", fontsize=8)
            if row == len(points) - 1:
                ax.set_xlabel("optimizer step", fontsize=8)
    title = title or ("Input to each tanh on the probe batch (first seed, inference mode): median, band = 15th–85th "
                      "percentile")
    fig.suptitle(f"{title}; grey: batch norm's moving averages still warming up (steps < {settled_step})",
                 fontsize=9, wrap=True)
    fig.tight_layout()
    save(fig, path)


def grouped_bars(values: dict[str, dict[str, float]], path: Path, ylabel: str, title: str, hline: float | None = None,
                 xlabel: str = "", colours: dict[str, str] | None = None) -> None:
    """``values`` maps group (x tick) -> series -> value; bars grouped by x tick."""
    groups = list(values)
    series = []
    for group in groups:
        series += [s for s in values[group] if s not in series]
    width = 0.8 / max(len(series), 1)
    fig, ax = pyplot().subplots(figsize=(max(5, 1.3 * len(groups)), 3.5))
    for i, s in enumerate(series):
        ys = [values[group].get(s, np.nan) for group in groups]
        ax.bar(np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width, ys, width, label=s,
               color=(colours or {}).get(s))
    if hline is not None:
        ax.axhline(hline, color="black", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def series_over_steps(series: dict, path: Path, ylabel: str, title: str, colours: dict[str, str]) -> None:
    """One line per variant; ``series`` maps variant -> DataFrame with ``step`` and ``value``."""
    fig, ax = pyplot().subplots(figsize=(7, 3.5))
    for variant, df in series.items():
        ax.plot(df["step"], df["value"], marker=".", label=variant, color=colours[variant])
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
