"""Stage ``choose@<variant>``: the learning rate a variant is trained at for confirmation, chosen from
the learning-rate grid's validation metrics and nothing else.

In: params.yaml (``lr_grid``: its rates and seeds) and the grid's DVC metrics
(``results/lr_grid/<variant>-s<seed>-lr<rate>/metrics.json``), read through ``validation_only``, which
drops the test metrics before anything else sees them.
Out: ``results/chosen/<variant>.json`` (``decision``; what a confirmation depends on): the chosen
``learning_rate`` (null when there is no grid, or every rate diverged or collapsed, with the ``reason``);
``results/chosen/<variant>.candidates.json``: all of ``choose``, adding ``at_edge`` ("lowest"/"highest"
when the choice is the grid's own end: the optimum may lie beyond it), the grid's ``epochs`` and
validation images, and the ``candidates`` it chose between (a row per rate). Each file is written whole
or not at all (``write``). The
selection rule (``best_rates``) is the report's too (``pipeline.compare.lr_grid``).

The rule: among the rates where no seed diverged or collapsed, the highest mean validation accuracy over
seeds; ties go to the lower mean validation loss, then to the smaller rate, so the choice is the same
every time and in any order. One file per variant, so DVC reruns exactly the confirmations
(``confirm@<variant>-<seed>``) whose variant's choice changed.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.labels import record_name

SELECTION_COLUMNS = ("variant", "rate", "n_seeds", "n_diverged", "n_collapsed", "validation_accuracy_mean",
                     "validation_loss_mean")
# A training that did not meet the divergence rule but ended near chance (10 classes: 0.1) collapsed: it is
# shown as such and its rate is no candidate for the best, never averaged in silently.
COLLAPSED_BELOW = 0.2
VALIDATION_KEYS = ("validation_accuracy", "validation_loss", "diverged_at_step")


@dataclass(frozen=True)
class Point:
    """One grid training as the choice sees it: no test metric exists here. (The report's
    ``pipeline.compare.runs.GridRun`` has these fields too, and goes through the same rule.)"""

    variant: str
    seed: int
    rate: float
    validation_accuracy: float
    validation_loss: float
    diverged: bool


def is_collapsed(point) -> bool:
    """Not diverged by the rule, but ended near chance: no candidate for the best rate."""
    return not point.diverged and point.validation_accuracy < COLLAPSED_BELOW


def validation_only(metrics: dict) -> dict:
    """The keys of a grid training's metrics the choice may read; the test metrics stay behind."""
    return {key: metrics[key] for key in VALIDATION_KEYS if key in metrics}


def read_points(variant: str, seeds: list[int], rates: list, results: Path = paths.RESULTS) -> list[Point]:
    points = []
    for rate in rates:
        for seed in seeds:
            path = results / "lr_grid" / record_name(variant, seed, rate) / "metrics.json"
            if not path.exists():
                raise UserError(f"no grid metrics {path}; run `dvc repro lr_grid@{variant}-{seed}-{rate}` "
                                "(or the sweep) before choosing a rate")
            seen = validation_only(json.loads(path.read_text()))
            points.append(Point(variant, seed, float(rate), float(seen.get("validation_accuracy", np.nan)),
                                float(seen.get("validation_loss", np.nan)), "diverged_at_step" in seen))
    return points


def groups(points: list, variants: list[str] | None = None):
    """(variant, rate, its trainings) for every (variant, rate): variants in ``variants`` order (else as
    met), rates ascending."""
    for variant in variants if variants is not None else dict.fromkeys(p.variant for p in points):
        for rate in sorted({p.rate for p in points if p.variant == variant}):
            yield variant, rate, [p for p in points if p.variant == variant and p.rate == rate]


def selection_row(variant: str, rate: float, group: list) -> dict:
    """The ``SELECTION_COLUMNS`` of one (variant, rate): all the choice may weigh."""
    return {"variant": variant, "rate": rate, "n_seeds": len(group),
            "n_diverged": sum(p.diverged for p in group), "n_collapsed": sum(is_collapsed(p) for p in group),
            "validation_accuracy_mean": float(np.mean([p.validation_accuracy for p in group])),
            "validation_loss_mean": float(np.mean([p.validation_loss for p in group]))}


def candidates(points: list[Point]) -> pd.DataFrame:
    """A row per (variant, rate) in ``SELECTION_COLUMNS``, rates ascending."""
    return pd.DataFrame([selection_row(*g) for g in groups(points)], columns=list(SELECTION_COLUMNS))


def best_rates(table: pd.DataFrame) -> dict[str, float | None]:
    """Each variant's best rate (None when every rate diverged or collapsed); reads only ``SELECTION_COLUMNS``."""
    table = table.loc[:, list(SELECTION_COLUMNS)]
    best: dict[str, float | None] = {}
    for variant in dict.fromkeys(table["variant"]):
        ok = table[(table["variant"] == variant) & (table["n_diverged"] == 0) & (table["n_collapsed"] == 0)]
        if ok.empty:
            best[variant] = None
            continue
        ordered = ok.sort_values(["validation_accuracy_mean", "validation_loss_mean", "rate"],
                                 ascending=[False, True, True], kind="stable")
        best[variant] = float(ordered.iloc[0]["rate"])
    return best


def edge(rate: float | None, rates: list) -> str | None:
    """"lowest"/"highest" when ``rate`` is the grid's own end (with at least two rates), else None."""
    grid = sorted(float(r) for r in rates)
    if rate is None or len(grid) < 2:
        return None
    return "lowest" if rate == grid[0] else "highest" if rate == grid[-1] else None


def choose(variant: str, seeds: list[int], rates: list, epochs: int, validation_images: int,
           results: Path = paths.RESULTS) -> dict:
    """The choice for one variant, as written to its file."""
    if not rates:
        return {"variant": variant, "learning_rate": None, "at_edge": None, "epochs": epochs,
                "validation_images": validation_images, "candidates": [],
                "reason": "no learning-rate grid (lr_grid.learning_rates is empty)"}
    table = candidates(read_points(variant, seeds, rates, results))
    rate = best_rates(table).get(variant)
    reason = ("every rate diverged or collapsed on some seed: extend the grid to smaller rates" if rate is None
              else "highest mean validation accuracy over seeds among rates where no seed diverged or collapsed")
    return {"variant": variant, "learning_rate": rate, "at_edge": edge(rate, rates), "epochs": epochs,
            "validation_images": validation_images, "seeds": list(seeds),
            "candidates": table.drop(columns="variant").to_dict(orient="records"), "reason": reason}


def decision(choice: dict) -> dict:
    """What a confirmation depends on: the variant, its rate and (for none) why. The candidates stay in the
    details file, so a grid point that changes them without changing the rate reruns no confirmation."""
    return {key: choice[key] for key in ("variant", "learning_rate", "reason")}


def write(choice: dict, path: Path) -> None:
    """The file appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(choice, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    from pipeline.core.cli import run_main
    from pipeline.core.params import Params

    parser = argparse.ArgumentParser(prog="python -m pipeline.compare.choice",
                                     description="Choose a variant's learning rate from the grid's validation metrics.")
    parser.add_argument("--variant", required=True, help="a key of 'variants' in params.yaml")
    args = parser.parse_args(argv)

    def body() -> None:
        params = Params.load(paths.PARAMS)
        params.variant(args.variant)  # an unknown name: one line listing the known ones
        grid = params.lr_grid
        choice = choose(args.variant, grid.seeds, grid.learning_rates, grid.epochs or params.train.epochs,
                        grid.validation_images)
        write(choice, paths.choice_details(args.variant))
        write(decision(choice), paths.chosen_file(args.variant))
        where = f" (at the grid's {choice['at_edge']} rate: extend the grid)" if choice["at_edge"] else ""
        rate = choice["learning_rate"]
        print(f"chose {args.variant}: learning rate {'none' if rate is None else f'{rate:g}'}{where}; {choice['reason']}")

    run_main(body)


if __name__ == "__main__":
    main()
