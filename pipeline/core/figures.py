"""The figure style every stage shares: one backend, one way to save, one colour per variant.

In: the variants in ``params.yaml`` order (``palette``), arrays, and an output path.
Out: PNG files, each with a title and labelled axes, so a figure reads without the code.
Nothing here reads data or talks to MLflow. matplotlib is imported when a figure is drawn,
never on import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The study's colours, in params.yaml order: a variant keeps its colour in every figure.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
NOTEBOOK_COLOUR = "#444444"  # the 2019 notebook's single runs, a marker beside the variants' own colours


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def palette(variants) -> dict[str, str]:
    """A colour per variant, by its position in ``variants`` (the order of ``params.yaml``)."""
    return {variant: COLOURS[i % len(COLOURS)] for i, variant in enumerate(variants)}


def save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)


def histogram_input(values, bins: int = 30) -> tuple[np.ndarray, int]:
    """The finite values, and as many bins (up to ``bins``) as their range can hold: a diverged network's
    parameters may be infinite, or so large that 30 bins of their spread are not distinct floats."""
    finite = np.asarray(values, dtype=float).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return finite, 1
    edges = np.linspace(finite.min(), finite.max(), bins + 1)
    return finite, bins if np.all(np.diff(edges) > 0) else 1


def bn_distributions(weights: dict[str, dict[str, dict[str, np.ndarray]]], path: Path,
                     colours: dict[str, str] | None = None, seed: int | None = None) -> None:
    """Histograms of gamma and beta: one row per BN layer, a colour per variant (``colours``, else
    ``palette`` of the variants given), each panel with its own legend (the variants it has).

    ``weights`` maps variant -> BN site (``conv1`` …) -> {"gamma": …, "beta": …}.
    """
    colours = colours or palette(weights)
    sites = []
    for per_variant in weights.values():
        sites += [s for s in per_variant if s not in sites]
    if not sites:
        return
    fig, axes = pyplot().subplots(len(sites), 2, figsize=(9, 1.9 * len(sites) + 0.6), squeeze=False)
    for row, site in enumerate(sites):
        for col, name in enumerate(("gamma", "beta")):
            ax = axes[row, col]
            for variant, per_variant in weights.items():
                if site in per_variant:
                    values, bins = histogram_input(per_variant[site][name])
                    ax.hist(values, bins=bins, alpha=0.55, label=variant, color=colours[variant])
            ax.set_title(f"{site}: {name}", fontsize=9)
            ax.set_xlabel(f"{name} value", fontsize=8)
            ax.set_ylabel("channels", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
    fig.suptitle("Learned batch-norm parameters (per channel)" + ("" if seed is None else f", seed {seed}"), fontsize=11)
    fig.tight_layout()
    save(fig, path)
