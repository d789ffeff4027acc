"""Figures shared by the training stage (per run) and the comparison report.

In: arrays or tidy tables already computed elsewhere, and an output path.
Out: PNG files, each with a title and labelled axes, so a figure reads without the code.
Nothing here reads data or talks to MLflow.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def confusion_matrix(cm: np.ndarray, path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(cm), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(10), yticks=range(10))
    save(fig, path)


def bn_distributions(weights: dict[str, dict[str, dict[str, np.ndarray]]], path: Path) -> None:
    """Histograms of gamma and beta: one row per BN layer, colours per variant.

    ``weights`` maps variant -> BN site (``conv1`` …) -> {"gamma": …, "beta": …}.
    """
    sites = []
    for per_variant in weights.values():
        sites += [s for s in per_variant if s not in sites]
    if not sites:
        return
    fig, axes = plt.subplots(len(sites), 2, figsize=(9, 1.9 * len(sites) + 0.6), squeeze=False)
    for row, site in enumerate(sites):
        for col, name in enumerate(("gamma", "beta")):
            ax = axes[row, col]
            for variant, per_variant in weights.items():
                if site in per_variant:
                    ax.hist(per_variant[site][name], bins=30, alpha=0.55, label=variant)
            ax.set_title(f"{site}: {name}", fontsize=9)
            ax.set_xlabel(f"{name} value", fontsize=8)
            ax.set_ylabel("channels", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Learned batch-norm parameters", fontsize=11)
    fig.tight_layout()
    save(fig, path)


def learning_curves(curves, path: Path) -> None:
    """Test accuracy and loss per epoch; a line per variant (mean over seeds), band = min..max."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("test_accuracy", "test_loss")):
        for variant, group in curves.groupby("variant", sort=False):
            agg = group.groupby("epoch")[metric].agg(["mean", "min", "max"])
            line, = ax.plot(agg.index, agg["mean"], marker="o", ms=3, label=variant)
            if group["seed"].nunique() > 1:
                ax.fill_between(agg.index, agg["min"], agg["max"], color=line.get_color(), alpha=0.2)
        ax.set(xlabel="epoch", ylabel=metric.replace("_", " "), title=metric.replace("_", " ") + " per epoch")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def accuracy_bars(table, path: Path) -> None:
    """Final test accuracy per variant with its interval; the notebook's single run as a marker."""
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(table))
    mean = table["test_accuracy_mean"].to_numpy()
    err = np.vstack([mean - table["accuracy_ci_low"].to_numpy(), table["accuracy_ci_high"].to_numpy() - mean])
    ax.bar(x, mean, color="#8fb3d9", label="this study (mean)")
    ax.errorbar(x, mean, yerr=err, fmt="none", ecolor="black", capsize=4, label="95% interval")
    ref = table["notebook_accuracy"].to_numpy(dtype=float)
    ax.scatter(x[~np.isnan(ref)], ref[~np.isnan(ref)], marker="D", color="#d9534f", zorder=3, label="notebook (2019)")
    low = np.nanmin(np.concatenate([table["accuracy_ci_low"].to_numpy(), ref]))
    ax.set_ylim(max(0.0, low - 0.02), min(1.0, float(np.nanmax(table["accuracy_ci_high"])) + 0.01))
    ax.set_xticks(x, table["variant"])
    ax.set(xlabel="variant", ylabel="test accuracy", title="Final test accuracy per variant")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def covariate_shift_grid(histories: dict, points: list[str], path: Path) -> None:
    """p15/p50/p85 of each tanh input over training; rows = points, columns = variants.

    ``histories`` maps variant -> DataFrame with a ``step`` column and ``<point>.p15`` … columns.
    """
    variants = list(histories)
    fig, axes = plt.subplots(len(points), len(variants), figsize=(2.6 * len(variants), 1.9 * len(points)),
                             squeeze=False, sharex=True)
    for col, variant in enumerate(variants):
        df = histories[variant]
        for row, point in enumerate(points):
            ax = axes[row, col]
            if f"{point}.p50" in df:
                ax.fill_between(df["step"], df[f"{point}.p15"], df[f"{point}.p85"], alpha=0.3)
                ax.plot(df["step"], df[f"{point}.p50"], lw=1.2)
            ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(variant, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{point} input", fontsize=8)
            if row == len(points) - 1:
                ax.set_xlabel("optimizer step", fontsize=8)
    fig.suptitle("Input to each tanh on the probe batch: median, band = 15th–85th percentile",
                 fontsize=9)
    fig.tight_layout()
    save(fig, path)


def grouped_bars(values: dict[str, dict[str, float]], path: Path, ylabel: str, title: str, hline: float | None = None,
                 xlabel: str = "") -> None:
    """``values`` maps group (x tick) -> series -> value; bars grouped by x tick."""
    groups = list(values)
    series = []
    for group in groups:
        series += [s for s in values[group] if s not in series]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(groups)), 3.5))
    for i, s in enumerate(series):
        ys = [values[group].get(s, np.nan) for group in groups]
        ax.bar(np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width, ys, width, label=s)
    if hline is not None:
        ax.axhline(hline, color="black", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, path)


def series_over_steps(series: dict, path: Path, ylabel: str, title: str) -> None:
    """One line per variant; ``series`` maps variant -> DataFrame with ``step`` and ``value``."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for variant, df in series.items():
        ax.plot(df["step"], df["value"], marker=".", label=variant)
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
