"""Figures shared by the training stage (per run) and the comparison report.

In: arrays or tidy tables already computed elsewhere, and an output path.
Out: PNG files. Nothing here reads data or talks to MLflow.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> None:
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
    _save(fig, path)


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
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Learned batch-norm parameters", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
