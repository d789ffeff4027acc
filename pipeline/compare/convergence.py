"""Convergence speed in the report: how many optimizer steps each variant needs to reach given accuracies.

In: each run's held-out accuracy curve (``step``, ``test_accuracy``: the MLflow step metric
``convergence/test_accuracy`` that ``pipeline.train.convergence`` logged) by (variant, seed), and the
target accuracies (``convergence.targets``).
Out: ``steps_to_target(curve, target)`` (linearly interpolated between the last checkpoint below
the target and the first at or above it; NaN when never reached); ``steps_table(...)`` (a row per
variant: per target the mean and std over the seeds that reached it and how many did);
``figure(...)`` (accuracy against steps, mean across seeds with a min–max band, one line per
variant); ``metrics(...)`` for ``reports/metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.compare.runs import RunData, RunKey
from pipeline.compare.tables import markdown_table
from pipeline.core.figures import palette, pyplot, save
from pipeline.core.params import Params

@dataclass(frozen=True)
class Convergence:
    steps: pd.DataFrame          # pipeline.compare.convergence.steps_table
    targets: list[float]
    figure: str                  # file name under figures/
    share_of_training: float     # convergence seconds / training seconds, mean over the runs
    n_runs: int


def steps_to_target(curve: pd.DataFrame, target: float) -> float:
    """The optimizer step at which the curve first reaches ``target``; NaN if it never does."""
    curve = curve.sort_values("step")
    steps = curve["step"].to_numpy(dtype=float)
    accuracy = curve["test_accuracy"].to_numpy(dtype=float)
    hit = np.flatnonzero(accuracy >= target)
    if not hit.size:
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(steps[0])
    s0, s1, a0, a1 = steps[i - 1], steps[i], accuracy[i - 1], accuracy[i]
    return float(s0 + (target - a0) * (s1 - s0) / (a1 - a0))


def target_label(target: float) -> str:
    return f"{100 * target:g}%"


def steps_table(curves: dict[RunKey, pd.DataFrame], variants: list[str], targets: list[float]) -> pd.DataFrame:
    """A row per variant with at least one curve: ``n_seeds`` and, per target, ``steps_<label>_mean``,
    ``_std`` (over the seeds that reached it; NaN when none did) and ``_reached`` (how many did)."""
    rows = []
    for variant in variants:
        runs = [curve for (name, _), curve in sorted(curves.items()) if name == variant and len(curve)]
        if not runs:
            continue
        row: dict = {"variant": variant, "n_seeds": len(runs)}
        for target in targets:
            reached = [s for s in (steps_to_target(curve, target) for curve in runs) if not np.isnan(s)]
            label = target_label(target)
            row[f"steps_{label}_mean"] = float(np.mean(reached)) if reached else float("nan")
            row[f"steps_{label}_std"] = float(np.std(reached, ddof=1)) if len(reached) > 1 else float("nan")
            row[f"steps_{label}_reached"] = len(reached)
        rows.append(row)
    return pd.DataFrame(rows)


def steps_cell(row, target: float) -> str:
    """``"412 ± 31"``, ``"not reached"``, or ``"612 (2 of 3 seeds; 1 not reached)"``."""
    label = target_label(target)
    reached, n = int(row[f"steps_{label}_reached"]), int(row["n_seeds"])
    if reached == 0:
        return "not reached"
    mean, std = row[f"steps_{label}_mean"], row[f"steps_{label}_std"]
    text = f"{mean:.0f}" if np.isnan(std) else f"{mean:.0f} ± {std:.0f}"
    return text if reached == n else f"{text} ({reached} of {n} seeds; {n - reached} not reached)"


def figure(curves: dict[RunKey, pd.DataFrame], path: Path, targets: list[float], images: int,
           colours: dict[str, str]) -> None:
    """Held-out accuracy against optimizer steps: per variant the mean over seeds and its min–max band."""
    fig, ax = pyplot().subplots(figsize=(8, 4.6))
    for variant in dict.fromkeys(name for name, _ in sorted(curves)):
        runs = [c.set_index("step")["test_accuracy"] for (name, _), c in sorted(curves.items())
                if name == variant and len(c)]
        if not runs:
            continue
        table = pd.concat(runs, axis=1).sort_index()
        seeds = ", ".join(str(seed) for name, seed in sorted(curves) if name == variant)
        line, = ax.plot(table.index, table.mean(axis=1), label=f"{variant} (seed{'s' if table.shape[1] > 1 else ''} "
                        f"{seeds})", linewidth=1.4, color=colours[variant])
        if table.shape[1] > 1:
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=line.get_color(), alpha=0.18)
    for target in targets:
        ax.axhline(target, color="grey", linewidth=0.6, linestyle=":")
    ax.set(xlabel="optimizer steps", ylabel=f"accuracy on {images:,} held-out test images",
           title="Convergence speed: held-out accuracy during training (mean over seeds, min–max band)",
           ylim=(max(0.0, min(targets, default=0.9) - 0.15), 1.0))
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)


def metrics(table: pd.DataFrame, targets: list[float]) -> dict:
    """``convergence``: per variant and target the mean steps (null when never reached) and how many seeds did."""
    out: dict = {}
    for row in table.to_dict("records"):
        per_variant = {}
        for target in targets:
            label = target_label(target)
            mean = row[f"steps_{label}_mean"]
            per_variant[f"steps_to_{label.rstrip('%')}pct"] = None if np.isnan(mean) else round(mean, 1)
            per_variant[f"reached_{label.rstrip('%')}pct"] = int(row[f"steps_{label}_reached"])
        out[row["variant"]] = per_variant
    return {"convergence": out} if out else {}


def section(runs: dict[RunKey, RunData], params: Params, figures_dir: Path,
            name: str = "convergence.png") -> Convergence | None:
    """Steps to each target accuracy per variant, the curves' figure (``name``), and what measuring them
    cost; None when no run measured convergence."""
    measured = {key: run for key, run in runs.items() if len(run.convergence)}
    if not measured:
        return None
    curves = {key: run.convergence for key, run in measured.items()}
    targets = params.convergence.targets
    steps = steps_table(curves, list(params.variants), targets)
    figure(curves, figures_dir / name, targets, params.convergence.images, palette(params.variants))
    share = float(np.nanmean([run.convergence_seconds / run.train_seconds for run in measured.values()]))
    return Convergence(steps, targets, name, share, len(measured))


def markdown(convergence: Convergence, steps_per_epoch: int) -> str:
    rows = pd.DataFrame({"variant": convergence.steps["variant"], "n": convergence.steps["n_seeds"].map(str)})
    for target in convergence.targets:
        rows[f"steps to {target_label(target)}"] = [steps_cell(row, target) for _, row in convergence.steps.iterrows()]
    table = markdown_table(rows, right=set(rows.columns) - {"variant"})
    return table + f"\n\n({steps_per_epoch:,} steps make one epoch.)"
