"""The comparison report as Markdown, rendered from the Jinja2 templates in ``pipeline/compare/templates``.

In: a ``ReportData`` (the compare stage's variant table and significance table, the params,
the figure names, the diagnostics section from ``pipeline.compare.diagnostics``) and ``Links``
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

from pipeline.core import store
from pipeline.compare import (conclusions, convergence, diagnostics, lr_grid, recalibration, results, significance,
                              tuned)
from pipeline.compare.convergence import Convergence
from pipeline.compare.lr_grid import LrGrid
from pipeline.core import paths
from pipeline.core.params import Params

TEMPLATES = Path(__file__).parent / "templates"
FIGURE_TITLES = {"curves.png": "Test accuracy and loss per epoch", "accuracy.png": "Final test accuracy with intervals",
                 "bn_parameters.png": "Learned batch-norm gamma and beta"}


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


@dataclass
class ReportData:
    table: pd.DataFrame          # pipeline.compare.results.variant_table
    significance: pd.DataFrame   # pipeline.compare.significance.comparisons (empty: nothing to compare)
    params: Params
    experiment: str
    store: str                   # store_label(uri)
    figures: list[str]
    diagnostics: object | None   # pipeline.compare.diagnostics.DiagnosticsSection
    n_train: int
    n_test: int
    conclusions: list = field(default_factory=list)   # pipeline.compare.conclusions.Judgement, in params order
    convergence: Convergence | None = None
    lr_grid: LrGrid | None = None
    tuned: object | None = None   # pipeline.compare.tuned.Tuned (with confirm.seeds)
    metrics: dict = field(default_factory=dict)     # reports/metrics.json (pipeline.compare.stage.metrics_summary)


def store_label(uri: str, root: Path | None = None) -> str:
    """The tracking store without this machine's paths: a local store under ``root`` (the store
    root, by default) relative to it, one elsewhere as ``…/<file name>``, a URL with credentials redacted."""
    root = (root or paths.store_root()).resolve()
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            path = Path(uri[len(prefix):]).resolve()
            return path.relative_to(root).as_posix() if path.is_relative_to(root) else f"…/{path.name}"
    return store.redact(uri)


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, trim_blocks=True,
                      lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["fmt"] = format
    env.globals.update(coadaptation_claim=diagnostics.coadaptation_claim,
                       variance_shift_call=diagnostics.variance_shift_call, pair_evidence=conclusions.pair_evidence,
                       recalibration_gap=recalibration.gap_line,
                       ranking_line=lr_grid.ranking_line)
    return env


def render_diagnostics(section, links: Links = FILE_LINKS) -> str:
    """The diagnostics section alone (the full report includes it)."""
    template = _environment().get_template("diagnostics.md.j2")
    return template.render(diagnostics=section, links=links, **diagnostics.tables(section))


def render(data: ReportData, links: Links = FILE_LINKS, with_diagnostics: bool = True, with_tables: bool = True) -> str:
    """The report; without ``with_diagnostics`` the diagnostics section, without ``with_tables`` the significance
    tables (their verdict lines stay), are replaced by a pointer to ``comparison.md``."""
    tests = data.significance
    context = {
        "with_diagnostics": with_diagnostics, "with_tables": with_tables,
        "experiment": data.experiment, "store": data.store, "seeds": data.params.seeds,
        "control": data.params.compare.control, "train": data.params.train, "alpha": data.params.compare.alpha,
        "n_train": data.n_train, "n_test": data.n_test, "links": links,
        "results_table": results.markdown(data.table, data.params.compare.confidence),
        "runs_by_variant": [{"variant": r.variant, "run_ids": r.run_ids.split()} for r in data.table.itertuples()],
        **_significance_context(tests, data),
        "figures": [{"name": name, "title": FIGURE_TITLES.get(name, name)} for name in data.figures],
        "conclusions": data.conclusions, "confidence": data.params.compare.confidence,
        "convergence": data.convergence, "convergence_settings": data.params.convergence,
        "steps_table": None if data.convergence is None else convergence.markdown(
            data.convergence, -(-data.n_train // data.params.train.batch_size)),
        "lr_grid": data.lr_grid, "lr_grid_settings": data.params.lr_grid,
        "grid_table": None if data.lr_grid is None else lr_grid.grid_markdown(data.lr_grid),
        "best_table": None if data.lr_grid is None else lr_grid.best_markdown(data.lr_grid, data.table,
                                                                              data.params.train.learning_rate),
        "diagnostics": data.diagnostics,
        **(diagnostics.tables(data.diagnostics) if data.diagnostics else {}),
        **_tuned_context(data),
    }
    return _environment().get_template("comparison.md.j2").render(context)


def _tuned_context(data: ReportData) -> dict:
    found = data.tuned
    if found is None:
        return {"tuned": None}
    tests = found.significance
    return {"tuned": found, "tuned_seeds": found.seeds, "tuned_budget": tuned.budget_line(found, data.params),
            "tuned_failed": tuned.failure_line(found, data.params),
            "tuned_accuracy_table": tuned.accuracy_markdown(found, data.table, data.params.train.learning_rate,
                                                            data.params.seeds),
            "tuned_conclusions_table": tuned.conclusions_markdown(data.conclusions, found),
            "tuned_verdicts": [significance.verdict_line(row) for row in tests.itertuples()] if len(tests) else []}


def _table_or_none(tests: pd.DataFrame, family: str) -> str | None:
    return significance.markdown(tests, family) if (tests["family"] == family).any() else None


def _significance_context(tests: pd.DataFrame, data: ReportData) -> dict:
    """The significance section's tables and lines, the interaction's line, and what the conclusions need."""
    settings = data.params.compare
    context = {"confirmatory_table": None, "exploratory_table": None, "verdicts": [], "interaction_lines": [],
               "n_confirmatory": 0, "n_exploratory": 0, "margin": settings.equivalence_margin,
               "min_sign_flip": 2 / 2 ** len(data.params.seeds),
               "parameters": dict(zip(data.table["variant"], data.table["parameters"])),
               "grid_verdicts": [j.verdict for j in data.lr_grid.conclusions] if data.lr_grid else [],
               "collapsed_below": lr_grid.COLLAPSED_BELOW}
    if tests.empty:
        return context
    questions = {i.label(): i.question for i in settings.interactions}
    context.update({
        "confirmatory_table": _table_or_none(tests, significance.CONFIRMATORY),
        "exploratory_table": _table_or_none(tests, significance.EXPLORATORY),
        "n_confirmatory": int((tests["family"] == significance.CONFIRMATORY).sum()),
        "n_exploratory": int((tests["family"] == significance.EXPLORATORY).sum()),
        "verdicts": [significance.verdict_line(row) for row in tests.itertuples()],
        "interaction_lines": [f"{questions.get(row.comparison, '')} {significance.verdict_line(row)}"
                              for row in tests.itertuples() if not row.b],
    })
    return context


def render_description(data: ReportData, links: Links, limit: int) -> str:
    """The report for an MLflow run description, at most ``limit`` characters (MLflow's tag limit):
    whole when it fits, else without the diagnostics section, else also without the significance tables,
    else cut at a line with a pointer."""
    for text in (render(data, links), render(data, links, with_diagnostics=False),
                 render(data, links, with_diagnostics=False, with_tables=False)):
        if len(text) <= limit:
            return text
    return cut(text, limit)


CUT_NOTE = "\n\n*(cut to fit MLflow's description limit: the whole report is `comparison.md` among this run's artifacts)*\n"


def cut(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its whole lines that fit with ``CUT_NOTE`` after them."""
    if len(text) <= limit:
        return text
    return text[:max(text.rfind("\n", 0, limit - len(CUT_NOTE)), 0)] + CUT_NOTE
