"""The comparison report as Markdown, rendered from the Jinja2 templates in ``pipeline/templates``.

In: a ``ReportData`` (the compare stage's variant table and significance table, the params,
the figure names, the diagnostics section from ``pipeline.diagnostics_report``) and ``Links``
saying where figures and run ids point.
Out: ``render(data, links)`` returns the Markdown. With ``FILE_LINKS`` (the default) figures
are ``figures/<name>`` beside ``reports/comparison.md``; with ``Links.mlflow_ui(...)`` they are
the MLflow UI's ``get-artifact`` URLs of the ``comparison`` run and run ids link to their run
pages, for that run's description. Tables are ``DataFrame.to_markdown``; nothing is computed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pipeline import paths, tracking
from pipeline.params import Params

TEMPLATES = Path(__file__).parent / "templates"
FIGURE_TITLES = {"curves.png": "Test accuracy and loss per epoch", "accuracy.png": "Final test accuracy with intervals",
                 "bn_parameters.png": "Learned batch-norm gamma and beta"}
DRIFT_KEYS = ("Δmean/std", "Δlog-std")


@dataclass(frozen=True)
class Links:
    """Where the report's figures and run ids point.

    ``artifacts_run_id``: the run whose ``figures/`` artifacts the figures are (None: files
    beside the report). ``experiment_id``: the training runs' experiment (None: plain ids).
    """
    artifacts_run_id: str | None = None
    experiment_id: str | None = None

    @classmethod
    def mlflow_ui(cls, artifacts_run_id: str, experiment_id: str) -> Links:
        return cls(artifacts_run_id, experiment_id)

    def figure(self, name: str) -> str:
        if self.artifacts_run_id is None:
            return f"figures/{name}"
        # Relative to the UI page (http://host:port/ or under a --static-prefix): the UI's own
        # artifact endpoint, mlflow.server's /get-artifact?path=…&run_uuid=…
        return "get-artifact?" + urlencode({"path": f"figures/{name}", "run_uuid": self.artifacts_run_id})

    def run(self, run_id: str) -> str:
        if self.experiment_id is None:
            return run_id
        return f"[{run_id}](#/experiments/{self.experiment_id}/runs/{run_id})"


FILE_LINKS = Links()


@dataclass(frozen=True)
class Convergence:
    steps: pd.DataFrame          # pipeline.convergence_report.steps_table
    targets: list[float]
    figure: str                  # file name under figures/
    share_of_training: float     # convergence seconds / training seconds, mean over the runs
    n_runs: int


@dataclass(frozen=True)
class LrGrid:
    """The learning-rate sensitivity section (``pipeline.compare.learning_rate_sensitivity``)."""

    summary: pd.DataFrame        # pipeline.lr_report.summary
    best: dict                   # variant -> best rate (None: every rate diverged)
    at_best: pd.DataFrame        # variant, rate, n_seeds, test_accuracy_{mean,std}: read after the choice
    study_order: list[str]       # variants by test accuracy at the study's own rate
    best_order: list[str]        # variants by test accuracy, each at its best rate
    conclusions: list            # pipeline.conclusions.Judgement at the best rates
    diverged: list[str]          # "plain-s0-lr0.3" for each diverged grid training
    figure: str
    validation_images: int
    n_runs: int


@dataclass
class ReportData:
    table: pd.DataFrame          # pipeline.compare.variant_table
    significance: pd.DataFrame   # pipeline.compare.comparisons (empty: nothing to compare)
    params: Params
    experiment: str
    store: str                   # store_label(uri)
    figures: list[str]
    diagnostics: object | None   # pipeline.diagnostics_report.DiagnosticsSection
    n_train: int
    n_test: int
    conclusions: list = field(default_factory=list)   # pipeline.conclusions.Judgement, in params order
    convergence: Convergence | None = None
    lr_grid: LrGrid | None = None


def store_label(uri: str, root: Path | None = None) -> str:
    """The tracking store without this machine's paths: a local store under ``root`` (the store
    root, by default) relative to it, one elsewhere as ``…/<file name>``, a URL with credentials redacted."""
    root = (root or paths.store_root()).resolve()
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            path = Path(uri[len(prefix):]).resolve()
            return path.relative_to(root).as_posix() if path.is_relative_to(root) else f"…/{path.name}"
    return tracking.redact(uri)


def or_dash(value, spec: str = ".3f") -> str:
    return "–" if value is None or pd.isna(value) else format(value, spec)


def plus_minus(mean: float, std: float, n_seeds: int, spec: str = ".4f") -> str:
    return format(mean, spec) if n_seeds == 1 else f"{mean:{spec}} ± {std:{spec}}"


def markdown_table(rows: pd.DataFrame, right: set[str] = frozenset()) -> str:
    """``rows`` (strings, already formatted) as a pipe table; columns in ``right`` right-aligned."""
    align = ["right" if column in right else "left" for column in rows.columns]
    return rows.to_markdown(index=False, colalign=align, disable_numparse=True)


def results_table(table: pd.DataFrame, confidence: float) -> str:
    rows = pd.DataFrame({
        "variant": table["variant"], "what changes": table["changes"],
        "notebook loss": table["notebook_loss"].map(lambda x: or_dash(x, ".4f")),
        "notebook acc.": table["notebook_accuracy"].map(lambda x: or_dash(x, ".4f")),
        "test loss": [plus_minus(r.test_loss_mean, r.test_loss_std, r.n_seeds) for r in table.itertuples()],
        "test accuracy": [plus_minus(r.test_accuracy_mean, r.test_accuracy_std, r.n_seeds) for r in table.itertuples()],
        f"{round(100 * confidence)}% interval": [f"{r.accuracy_ci_low:.4f}–{r.accuracy_ci_high:.4f} ({r.ci_method})"
                                                 for r in table.itertuples()],
        "n": table["n_seeds"].map(str), "train s": table["train_seconds_mean"].map(lambda x: f"{x:.0f}"),
        "parameters": table["parameters"].map(lambda x: f"{x:,}"),
    })
    return markdown_table(rows, right={"notebook loss", "notebook acc.", "test loss", "test accuracy", "n", "train s",
                                       "parameters"})


def significance_table(significance: pd.DataFrame) -> str:
    rows = pd.DataFrame({
        "comparison": significance["a"] + " vs " + significance["b"],
        "difference (pp)": significance["diff_pp"].map(lambda x: f"{x:+.2f}"),
        "A right, B wrong": significance["only_a_right"].map(str),
        "B right, A wrong": significance["only_b_right"].map(str),
        "McNemar p": significance["mcnemar_p_per_seed"],
        "seeds: paired t p": significance["seed_t_p"].map(lambda x: or_dash(x, ".2g")),
        "Holm-adjusted p": significance["p_holm"].map(lambda x: f"{x:.2g}"),
        "verdict": significance["verdict"].map(lambda v: v.split(" — ")[1]),
    })
    return markdown_table(rows, right={"difference (pp)", "A right, B wrong", "B right, A wrong", "seeds: paired t p",
                                       "Holm-adjusted p"})


def steps_table(convergence: Convergence, steps_per_epoch: int) -> str:
    from pipeline.convergence_report import cell, target_label

    rows = pd.DataFrame({"variant": convergence.steps["variant"], "n": convergence.steps["n_seeds"].map(str)})
    for target in convergence.targets:
        rows[f"steps to {target_label(target)}"] = [cell(row, target) for _, row in convergence.steps.iterrows()]
    table = markdown_table(rows, right=set(rows.columns) - {"variant"})
    return table + f"\n\n({steps_per_epoch:,} steps make one epoch.)"


def grid_table(grid: LrGrid) -> str:
    """Rates as rows, variants as columns: validation accuracy (mean, min–max), the best in bold."""
    from pipeline.lr_report import cell

    variants = list(dict.fromkeys(grid.summary["variant"]))
    rows = []
    for rate in sorted(set(grid.summary["rate"])):
        row = {"learning rate": f"{rate:g}"}
        for variant in variants:
            match = grid.summary[(grid.summary["variant"] == variant) & (grid.summary["rate"] == rate)]
            text = "–" if match.empty else cell(match.iloc[0])
            row[variant] = f"**{text}**" if grid.best.get(variant) == rate else text
        rows.append(row)
    return markdown_table(pd.DataFrame(rows), right=set(variants) | {"learning rate"})


def best_table(grid: LrGrid, study: pd.DataFrame, study_rate: float) -> str:
    """Per variant: its best rate, the validation accuracy there, then the test accuracy there and in the study."""
    study_accuracy = {r.variant: plus_minus(r.test_accuracy_mean, r.test_accuracy_std, r.n_seeds)
                      for r in study.itertuples()}
    rows = []
    for variant, rate in grid.best.items():
        chosen = grid.at_best[grid.at_best["variant"] == variant]
        picked = grid.summary[(grid.summary["variant"] == variant) & (grid.summary["rate"] == rate)]
        rows.append({
            "variant": variant, "best rate": "every rate diverged" if rate is None else f"{rate:g}",
            "validation acc. there": "–" if picked.empty else f"{picked['validation_accuracy_mean'].iloc[0]:.4f}",
            "test acc. there": "–" if chosen.empty else plus_minus(chosen["test_accuracy_mean"].iloc[0],
                                                                  chosen["test_accuracy_std"].iloc[0],
                                                                  int(chosen["n_seeds"].iloc[0])),
            f"test acc. in the study (rate {study_rate:g})": study_accuracy.get(variant, "–"),
        })
    frame = pd.DataFrame(rows)
    return markdown_table(frame, right=set(frame.columns) - {"variant"})


def pair_evidence(pair) -> str:
    """One line of evidence: ``bn_hidden − dropout: +5.61 pp (95% interval across 3 seeds …), Holm p = …``."""
    if pair.n_seeds > 1:
        spread = f"interval across {pair.n_seeds} seeds {pair.low_pp:+.2f} to {pair.high_pp:+.2f} pp"
    else:
        spread = "one seed: no interval across seeds"
    return (f"{pair.better} − {pair.worse}: {pair.diff_pp:+.2f} pp ({spread}); {pair.test}, "
            f"Holm-adjusted p = {pair.p_holm:.2g}: {pair.call}")


def _diagnostics_tables(section) -> dict:
    tables = {"drift_table": None, "coadaptation_table": None, "variance_shift_table": None}
    if section.drift is not None:
        drift = section.drift.apply(lambda column: column.map(lambda pair: ", ".join(map(or_dash, pair))))
        drift.columns = [f"{point}: {', '.join(DRIFT_KEYS)}" for point in drift.columns]
        tables["drift_table"] = markdown_table(drift.rename_axis("variant").reset_index(), right=set(drift.columns))
    if section.coadaptation:
        rows = pd.DataFrame({"variant": list(section.coadaptation),
                             "mean abs. correlation, fc1": [or_dash(c) for c in section.coadaptation.values()]})
        tables["coadaptation_table"] = markdown_table(rows, right={"mean abs. correlation, fc1"})
    if section.variance_shift is not None:
        shift = section.variance_shift.apply(lambda column: column.map(or_dash))
        tables["variance_shift_table"] = markdown_table(shift.rename_axis("BN layer").reset_index(),
                                                        right=set(shift.columns))
    return tables


def coadaptation_claim(claim) -> str:
    """One line: the difference in co-adaptation, and whether the probe images tell the two apart;
    without saved activations, only the sign."""
    head = f"{claim.with_dropout} ({or_dash(claim.value_with)}) vs {claim.without} ({or_dash(claim.value_without)})"
    if not claim.differences:
        lowers = "lowers" if claim.value_with < claim.value_without else "does not lower"
        return f"{head}: dropout {lowers} the measured co-adaptation."
    if len(claim.differences) == 1:
        d = claim.differences[0]
        spread = f"{d['difference']:+.3f}, 95% bootstrap interval over probe images {d['low']:+.3f} to {d['high']:+.3f}"
    else:
        spread = (f"{claim.mean_difference:+.3f} on average over {len(claim.differences)} seeds; the 95% bootstrap "
                  f"interval over probe images excludes 0 in {claim.seeds_excluding_zero} of them")
    verdict = ("lower with dropout" if claim.lower_everywhere else "higher with dropout" if claim.higher_everywhere
               else "not distinguishable on this probe")
    return f"{head}: {spread}: {verdict}."


def variance_shift_call(claim) -> str:
    common, larger = len(claim.layers), claim.larger
    if common and larger == common:
        return "support it: the shift is larger with dropout before batch norm in every layer both have"
    if larger * 2 > common:
        return f"partly support it: the shift is larger with dropout in {larger} of {common} layers"
    return f"do not support it: the shift is larger with dropout in only {larger} of {common} layers"


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["fmt"] = format
    env.globals.update(coadaptation_claim=coadaptation_claim, variance_shift_call=variance_shift_call,
                       pair_evidence=pair_evidence)
    return env


def render_diagnostics(section, links: Links = FILE_LINKS) -> str:
    """The diagnostics section alone (the full report includes it)."""
    template = _environment().get_template("diagnostics.md.j2")
    return template.render(diagnostics=section, links=links, **_diagnostics_tables(section))


def render(data: ReportData, links: Links = FILE_LINKS, diagnostics: bool = True) -> str:
    """The report; without ``diagnostics`` the diagnostics section is replaced by a pointer to ``comparison.md``."""
    significance = data.significance
    context = {
        "with_diagnostics": diagnostics,
        "experiment": data.experiment, "store": data.store, "seeds": data.params.seeds,
        "control": data.params.compare.control, "train": data.params.train, "alpha": data.params.compare.alpha,
        "n_train": data.n_train, "n_test": data.n_test, "links": links,
        "results_table": results_table(data.table, data.params.compare.confidence),
        "runs_by_variant": [{"variant": r.variant, "run_ids": r.run_ids.split()} for r in data.table.itertuples()],
        "significance_table": None if significance.empty else significance_table(significance),
        "verdicts": [] if significance.empty else significance["verdict"].tolist(),
        "figures": [{"name": name, "title": FIGURE_TITLES.get(name, name)} for name in data.figures],
        "conclusions": data.conclusions, "confidence": data.params.compare.confidence,
        "convergence": data.convergence, "convergence_settings": data.params.convergence,
        "steps_table": None if data.convergence is None else steps_table(
            data.convergence, -(-data.n_train // data.params.train.batch_size)),
        "lr_grid": data.lr_grid, "lr_grid_settings": data.params.lr_grid,
        "grid_table": None if data.lr_grid is None else grid_table(data.lr_grid),
        "best_table": None if data.lr_grid is None else best_table(data.lr_grid, data.table,
                                                                   data.params.train.learning_rate),
        "diagnostics": data.diagnostics,
        **(_diagnostics_tables(data.diagnostics) if data.diagnostics else {}),
    }
    return _environment().get_template("comparison.md.j2").render(context)


def render_description(data: ReportData, links: Links, limit: int) -> str:
    """The report for an MLflow run description, at most ``limit`` characters (MLflow's tag limit):
    whole when it fits, else without the diagnostics section, else cut at a line with a pointer."""
    text = render(data, links)
    if len(text) <= limit:
        return text
    return cut(render(data, links, diagnostics=False), limit)


CUT_NOTE = "\n\n*(cut to fit MLflow's description limit: the whole report is `comparison.md` among this run's artifacts)*\n"


def cut(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its whole lines that fit with ``CUT_NOTE`` after them."""
    if len(text) <= limit:
        return text
    return text[:max(text.rfind("\n", 0, limit - len(CUT_NOTE)), 0)] + CUT_NOTE
