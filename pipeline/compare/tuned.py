"""The answer at tuned rates: the notebook's conclusions judged again where every variant is trained at
the rate its grid chose, on seeds the grid never used, beside the answer at the notebook's setting.

In: ``params`` (``confirm.seeds``, ``variants``, ``compare``), the choices (``results/chosen/``), the
confirmations' records (``results/confirm/``) and their runs in MLflow; the study's table and conclusions.
Out: ``section(...)``: a ``Tuned`` (None without ``confirm.seeds``, so the study's report is unchanged)
with the variants' table at the tuned rates, the comparisons (the same statistics as the study's: seeds
and test images, Holm within each family), the conclusions, and the convergence curves at the tuned rates
(``convergence_tuned.png``); ``accuracy_markdown`` (each variant at both settings),
``conclusions_markdown`` (each conclusion at both, side by side) and ``metrics``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.compare import conclusions, convergence, results, significance
from pipeline.compare.runs import fetch_runs, read_records
from pipeline.compare.tables import markdown_table, plus_minus
from pipeline.core import labels, paths
from pipeline.core.params import Params

FIGURE = "convergence_tuned.png"


@dataclass(frozen=True)
class Tuned:
    rates: dict                    # variant -> chosen rate (None: no rate, every grid rate failed)
    edges: dict                    # variant -> "lowest"/"highest" when the rate is the grid's end
    table: pd.DataFrame            # pipeline.compare.results.variant_table on the confirmations
    significance: pd.DataFrame     # pipeline.compare.significance.comparisons on the confirmations
    conclusions: list              # pipeline.compare.conclusions.Judgement at the tuned rates
    convergence: object | None     # pipeline.compare.convergence.Convergence (figure FIGURE)
    seeds: list[int]
    budget: list = ()              # Part per part of the answer: study, grid, confirmations
    failed: list = ()              # Failed: confirmations that diverged or collapsed at their tuned rate


@dataclass(frozen=True)
class Failed:
    """A confirmation that diverged, or collapsed (test accuracy below ``COLLAPSED_BELOW``), at its tuned rate."""
    variant: str
    seed: int
    rate: float
    test_accuracy: float
    diverged: bool


def failures(params: Params, results_dir: Path, rates: dict) -> list[Failed]:
    """The confirmations that failed: a rate the grid chose on its seeds need not be stable on fresh ones."""
    from pipeline.compare.choice import COLLAPSED_BELOW

    found = []
    for variant in params.variants:
        for seed in params.confirm.seeds:
            path = paths.result_dir(variant, seed, labels.TUNED, results_dir) / "record.json"
            if rates.get(variant) is None or not path.exists():
                continue
            record = json.loads(path.read_text())
            diverged = "diverged_at_step" in record
            if diverged or record["test_accuracy"] < COLLAPSED_BELOW:
                found.append(Failed(variant, seed, rates[variant], record["test_accuracy"], diverged))
    return found


def failure_line(tuned: Tuned, params: Params) -> str:
    """One paragraph naming the failed confirmations per variant, and what that says about the choice."""
    from pipeline.compare.choice import COLLAPSED_BELOW

    if not tuned.failed:
        return ""
    per_variant: dict[str, list[Failed]] = {}
    for f in tuned.failed:
        per_variant.setdefault(f.variant, []).append(f)
    parts = []
    for variant, failed in per_variant.items():
        how = "; ".join(f"seed {f.seed}: {'diverged' if f.diverged else 'collapsed'}, test accuracy "
                        f"{f.test_accuracy:.4f}" for f in failed)
        parts.append(f"`{variant}` at {failed[0].rate:g}, {len(failed)} of {len(params.confirm.seeds)} seeds ({how})")
    seeds = params.lr_grid.seeds
    grid_seeds = f"{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(map(str, seeds))}"
    return (f"**Failed at the tuned rate:** {'; '.join(parts)}. A training collapsed when its loss stayed finite "
            f"but its test accuracy ended below {COLLAPSED_BELOW:g}, near a uniform guess's 0.1. The grid chose "
            f"that rate on {grid_seeds}, where it trained; on fresh seeds it is not reliably stable, so the rate is "
            "too close to where the variant stops learning. These trainings stay in every number of this section "
            "(leaving them out would choose on the test results); a grid with more seeds (`lr_grid.seeds`) lets "
            "the choice see the instability and pass that rate over.")


@dataclass(frozen=True)
class Part:
    """What one part of the answer cost: its trainings, how many stopped early, their ``model.fit`` seconds."""
    name: str
    trainings: int
    diverged: int
    fit_seconds: float


def budget(params: Params, results_dir: Path) -> list[Part]:
    """The trainings behind the answer, from their DVC records: the study's, the grid's and the confirmations'."""
    def part(name: str, folders: list[Path]) -> Part:
        found = [json.loads((f / "record.json").read_text()) for f in folders if (f / "record.json").exists()]
        return Part(name, len(found), sum("diverged_at_step" in r for r in found),
                    sum(r.get("train_seconds", 0.0) for r in found))

    variants = list(params.variants)
    return [part("study", [paths.result_dir(v, s, None, results_dir) for v in variants for s in params.seeds]),
            part("grid", [paths.result_dir(v, s, r, results_dir) for v in variants for s in params.lr_grid.seeds
                          for r in params.lr_grid.learning_rates]),
            part("confirmation", [paths.result_dir(v, s, labels.TUNED, results_dir) for v in variants
                                  for s in params.confirm.seeds])]


def budget_line(tuned: Tuned, params: Params) -> str:
    """One sentence: how many trainings of which kind this answer rests on, and their training time."""
    parts = {p.name: p for p in tuned.budget}
    grid = params.lr_grid
    epochs = grid.epochs or params.train.epochs
    text = []
    for p in tuned.budget:
        what = {"study": f"the study ({len(params.variants)} variants × seeds {', '.join(map(str, params.seeds))}, "
                         f"rate {params.train.learning_rate:g})",
                "grid": f"the grid ({len(params.variants)} variants × {len(grid.learning_rates)} rates "
                        f"{', '.join(f'{r:g}' for r in grid.learning_rates)} × seed"
                        f"{'s' if len(grid.seeds) > 1 else ''} {', '.join(map(str, grid.seeds))}, {epochs} epochs"
                        + (f"; {p.diverged} stopped early, diverged" if p.diverged else "") + ")",
                "confirmation": f"the confirmations ({len(params.variants)} variants × seeds "
                                f"{', '.join(map(str, params.confirm.seeds))})"}[p.name]
        text.append(f"{p.trainings} trainings of {what}, {p.fit_seconds / 60:.0f} min of `model.fit`")
    total = sum(p.fit_seconds for p in parts.values())
    return (f"**Budget:** {'; '.join(text)}: {sum(p.trainings for p in parts.values())} trainings, "
            f"{total / 3600:.1f} h of training time in all on the machine that ran them (the sum over trainings, "
            f"not wall time: trainings may run side by side).")


def read_choices(variants: list[str], results_dir: Path) -> tuple[dict, dict]:
    rates, edges = {}, {}
    for variant in variants:
        decision = paths.chosen_file(variant, results_dir)
        details = paths.choice_details(variant, results_dir)
        rates[variant] = json.loads(decision.read_text())["learning_rate"] if decision.exists() else None
        edges[variant] = json.loads(details.read_text()).get("at_edge") if details.exists() else None
    return rates, edges


def section(params: Params, results_dir: Path, uri: str, figures_dir: Path) -> Tuned | None:
    seeds = params.confirm.seeds
    if not seeds:
        return None
    rates, edges = read_choices(list(params.variants), results_dir)
    confirmed = [v for v in params.variants if rates[v] is not None]
    if not confirmed:
        return Tuned(rates, edges, pd.DataFrame(), pd.DataFrame(), [], None, seeds, budget(params, results_dir),
                     failures(params, results_dir, rates))
    records = read_records(confirmed, seeds, results_dir, [labels.TUNED])
    runs = {key[:2]: run for key, run in fetch_runs(records, uri).items()}
    specs = {v: params.variant(v) for v in confirmed}
    table = results.variant_table(runs, specs, {}, params.compare.confidence)
    tests = significance.comparisons(runs, confirmed, seeds, params.compare)
    judged = conclusions.judge_runs(runs, tests, params)
    curves = convergence.section(runs, params, figures_dir, FIGURE)
    return Tuned(rates, edges, table, tests, judged, curves, seeds, budget(params, results_dir),
                 failures(params, results_dir, rates))


def accuracy_markdown(tuned: Tuned, study: pd.DataFrame, study_rate: float, study_seeds: list[int]) -> str:
    """Per variant: the test accuracy at the notebook's rate (study seeds) and at its tuned rate (fresh seeds)."""
    at_tuned = {r.variant: r for r in tuned.table.itertuples()} if len(tuned.table) else {}
    rows = []
    for r in study.itertuples():
        rate = tuned.rates.get(r.variant)
        edge = tuned.edges.get(r.variant)
        there = at_tuned.get(r.variant)
        rows.append({
            "variant": r.variant,
            f"test acc. at {study_rate:g} (seeds {', '.join(map(str, study_seeds))})":
                plus_minus(r.test_accuracy_mean, r.test_accuracy_std, r.n_seeds),
            "tuned rate": "none (every grid rate diverged)" if rate is None else f"{rate:g}" + (
                f" (the grid's {edge}: extend the grid)" if edge else ""),
            f"test acc. at the tuned rate (seeds {', '.join(map(str, tuned.seeds))})": "–" if there is None
            else plus_minus(there.test_accuracy_mean, there.test_accuracy_std, there.n_seeds),
            "change (pp)": "–" if there is None
            else f"{100 * (there.test_accuracy_mean - r.test_accuracy_mean):+.2f}",
        })
    frame = pd.DataFrame(rows)
    return markdown_table(frame, right=set(frame.columns) - {"variant", "tuned rate"})


def conclusions_markdown(study: list, tuned: Tuned) -> str:
    """Each conclusion's verdict at the notebook's setting and at the tuned rates, side by side."""
    at_tuned = {j.claim: j for j in tuned.conclusions}
    rows = [{"conclusion": j.claim, "at the notebook's setting": j.verdict,
             "at the tuned rates": at_tuned[j.claim].verdict if j.claim in at_tuned else "not confirmed",
             "same answer?": "yes" if j.claim in at_tuned and at_tuned[j.claim].verdict == j.verdict else "no"}
            for j in study]
    return markdown_table(pd.DataFrame(rows))


def metrics(tuned: Tuned) -> dict:
    out = {"rates": {v: r for v, r in tuned.rates.items()}, "seeds": list(tuned.seeds)}
    if len(tuned.table):
        out["test_accuracy"] = {r.variant: round(r.test_accuracy_mean, 6) for r in tuned.table.itertuples()}
    if tuned.conclusions:
        out["conclusions"] = conclusions.metrics(tuned.conclusions)
    out["failed"] = [{"variant": f.variant, "seed": f.seed, "learning_rate": f.rate,
                      "test_accuracy": round(f.test_accuracy, 6), "diverged": f.diverged} for f in tuned.failed]
    return {"tuned": out}
