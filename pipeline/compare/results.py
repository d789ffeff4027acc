"""The report's results section: a row per variant, and the main figures.

In: the runs read back (``pipeline.compare.runs.RunData`` by (variant, seed)), the variant specs and
the notebook's reference numbers from ``params.yaml``.
Out: ``variant_table`` (a DataFrame, best first: mean and std over seeds, an accuracy interval,
training time, parameters, run ids), ``markdown`` (that table for the report) and ``draw_figures``
(learning curves, final accuracy, batch-norm weights; a colour per variant).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compare import evidence, figures, stats
from pipeline.compare.runs import RunData, RunKey
from pipeline.compare.tables import markdown_table, or_dash, plus_minus
from pipeline.core.figures import bn_distributions
from pipeline.core.params import VariantSpec


def _interval(correct: np.ndarray, confidence: float) -> tuple[float, float, str]:
    """The variant's mean accuracy interval, with both sources: seeds and which test images were drawn."""
    c = evidence.contrast({"v": correct}, {"v": 1.0}, margin=0.0, alpha=1 - confidence)
    n_seeds, n_test = correct.shape
    source = f"{n_seeds} seeds and {n_test:,} test images" if n_seeds > 1 else f"{n_test:,} test images, one seed"
    return c.interval.low, c.interval.high, source


def _reproduced(notebook, correct: np.ndarray, confidence: float) -> str:
    """Whether the notebook's single run lies where one new run of ours would (``yes``; ``no: 0.84 pp below``)."""
    if notebook is None:
        return "–"
    r = evidence.reproduction(notebook.accuracy, correct, alpha=1 - confidence)
    if r.reproduced:
        return "yes"
    return f"no: {abs(100 * r.outside_by):.2f} pp {'above' if r.outside_by > 0 else 'below'}"


def variant_table(runs: dict[RunKey, RunData], specs: dict[str, VariantSpec], reference: dict,
                  confidence: float) -> pd.DataFrame:
    """The results table: a row per variant (mean and std over seeds, accuracy interval, whether the notebook's
    number is reproduced), best first."""
    rows = []
    for variant, spec in specs.items():
        variant_runs = [run for (name, _), run in sorted(runs.items()) if name == variant]
        correct = np.vstack([run.correct for run in variant_runs])
        accuracy_mean, accuracy_std = stats.mean_std([run.test_accuracy for run in variant_runs])
        loss_mean, loss_std = stats.mean_std([run.test_loss for run in variant_runs])
        ci_low, ci_high, ci_method = _interval(correct, confidence)
        notebook = reference.get(variant)
        rows.append({
            "variant": variant, "changes": spec.describe(),
            "notebook_loss": notebook.loss if notebook else np.nan,
            "notebook_accuracy": notebook.accuracy if notebook else np.nan,
            "notebook_reproduced": _reproduced(notebook, correct, confidence),
            "n_seeds": len(variant_runs),
            "test_loss_mean": loss_mean, "test_loss_std": loss_std,
            "test_accuracy_mean": accuracy_mean, "test_accuracy_std": accuracy_std,
            "accuracy_ci_low": ci_low, "accuracy_ci_high": ci_high, "ci_method": ci_method,
            "train_seconds_mean": float(np.mean([run.train_seconds for run in variant_runs])),
            "parameters": variant_runs[0].parameters,
            "run_ids": " ".join(run.run_id for run in variant_runs),
        })
    return pd.DataFrame(rows).sort_values("test_accuracy_mean", ascending=False, kind="stable").reset_index(drop=True)


def markdown(table: pd.DataFrame, confidence: float) -> str:
    rows = pd.DataFrame({
        "variant": table["variant"], "what changes": table["changes"],
        "notebook loss": table["notebook_loss"].map(lambda x: or_dash(x, ".4f")),
        "notebook acc.": table["notebook_accuracy"].map(lambda x: or_dash(x, ".4f")),
        "notebook reproduced?": table["notebook_reproduced"],
        "test loss": [plus_minus(r.test_loss_mean, r.test_loss_std, r.n_seeds) for r in table.itertuples()],
        "test accuracy": [plus_minus(r.test_accuracy_mean, r.test_accuracy_std, r.n_seeds) for r in table.itertuples()],
        f"{round(100 * confidence)}% interval": [f"{r.accuracy_ci_low:.4f}–{r.accuracy_ci_high:.4f} ({r.ci_method})"
                                                 for r in table.itertuples()],
        "n": table["n_seeds"].map(str), "train s": table["train_seconds_mean"].map(lambda x: f"{x:.0f}"),
        "parameters": table["parameters"].map(lambda x: f"{x:,}"),
    })
    return markdown_table(rows, right={"notebook loss", "notebook acc.", "test loss", "test accuracy", "n", "train s",
                                       "parameters"})


def draw_figures(runs: dict[RunKey, RunData], table: pd.DataFrame, out: Path, colours: dict[str, str]) -> list[str]:
    """The report's main figures (batch-norm weights of the first seed only); returns their file names."""
    names = []
    curves = pd.concat([r.curves.assign(variant=r.variant, seed=r.seed) for r in runs.values()], ignore_index=True)
    figures.learning_curves(curves, out / "curves.png", colours)
    names.append("curves.png")
    figures.accuracy_bars(table, out / "accuracy.png", colours, "95% interval (the results table's)")
    names.append("accuracy.png")
    first_seed = min(seed for _, seed in runs)
    bn = {run.variant: run.bn for (_, seed), run in runs.items() if seed == first_seed and run.bn}
    if bn:
        bn_distributions(bn, out / "bn_parameters.png", colours, seed=first_seed)
        names.append("bn_parameters.png")
    return names
