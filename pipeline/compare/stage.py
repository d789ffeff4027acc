"""Stage ``compare``: the study's answer, built from MLflow's query API.

In: ``params.yaml`` (``variants``, ``seeds``, ``mlflow``, ``compare``) and the training
stages' records ``results/<variant>-s<seed>/record.json``: they name exactly the runs the
current pipeline state produced, so older and failed runs in the store never leak in.
The runs' params, metrics, metric histories and artifacts are read back from MLflow
(``pipeline.compare.runs``).
Out: ``reports/comparison.md`` (rendered by ``pipeline.compare.report``: the notebook's conclusions judged
(``pipeline.compare.conclusions``), the results, which differences are real, convergence speed
(``pipeline.compare.convergence``), learning-rate sensitivity when ``lr_grid.learning_rates`` is set
(``pipeline.compare.lr_grid``, from ``results/lr_grid/``), figures, diagnostics), ``comparison.csv`` (one row per
variant), ``significance.csv`` (one row per comparison, with its verdict), ``lr_grid_significance.csv`` and ``tuned_significance.csv`` (the
same at each variant's best learning rate; only a header without a grid),
``reports/figures/*.png``, ``reports/metrics.json`` (for ``dvc metrics``/``dvc exp show``),
and a ``comparison`` run in the same MLflow experiment holding the tables and figures, whose
description is the report with figures and runs linked for the MLflow UI.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from pipeline.core import store
from pipeline.compare import conclusions, convergence, diagnostics, lr_grid, report, results, significance, tuned
from pipeline.compare.runs import RunData, RunKey, check_records_match, fetch_runs, read_records
from pipeline.core import labels, paths
from pipeline.core.cli import run_main
from pipeline.core.figures import palette
from pipeline.core.params import Params

log = logging.getLogger("pipeline.compare.stage")

DESCRIPTION_LIMIT = 8000  # MLflow truncates a tag value (the run description is one) beyond this many characters


def _publish(staging: Path, reports: Path) -> None:
    """Move the staged report into place: each folder as a whole, then the files."""
    reports.mkdir(parents=True, exist_ok=True)
    for item in sorted(staging.iterdir(), key=lambda p: not p.is_dir()):
        if item.is_dir() and (reports / item.name).exists():
            shutil.rmtree(reports / item.name)
        os.replace(item, reports / item.name)


def _tagged(frame: pd.DataFrame, run: RunData) -> pd.DataFrame:
    return frame.assign(variant=run.variant, seed=run.seed, run=labels.run_label(run.variant, run.seed))


def write_overlays(runs: dict[RunKey, RunData], out: Path) -> None:
    """Long-form tables for ``dvc plots show`` (dvc.yaml's top-level ``plots``): a row per run and point."""
    out.mkdir()
    ordered = [run for _, run in sorted(runs.items())]
    epochs = pd.concat([_tagged(run.curves[["epoch", "test_accuracy"]], run) for run in ordered], ignore_index=True)
    epochs[["variant", "seed", "run", "epoch", "test_accuracy"]].to_csv(out / "test_accuracy_per_epoch.csv", index=False)
    steps = pd.concat([_tagged(run.convergence[["step", "test_accuracy"]], run) for run in ordered], ignore_index=True)
    steps[["variant", "seed", "run", "step", "test_accuracy"]].to_csv(out / "heldout_accuracy_per_step.csv", index=False)


def metrics_summary(data: report.ReportData) -> dict:
    """What ``reports/metrics.json`` holds for ``dvc metrics`` (and the summary run logs): rounded means,
    verdict numbers, the conclusions' verdicts, steps to the target accuracies, the grid, diagnostics."""
    metrics = {r.variant: {"test_accuracy": round(r.test_accuracy_mean, 6), "test_loss": round(r.test_loss_mean, 6),
                           "n_seeds": r.n_seeds} for r in data.table.itertuples()}
    if not data.significance.empty:
        metrics["significance"] = {
            (f"{r.a}_vs_{r.b}" if r.b else f"interaction_{n}"): {
                "diff_pp": round(r.diff_pp, 4), "low_pp": round(r.low_pp, 4), "high_pp": round(r.high_pp, 4),
                "p_holm": round(r.p_holm, 6), "equivalent": int(r.verdict == "equivalent")}
            for n, r in enumerate(data.significance.itertuples(), start=1)}
    metrics.update(conclusions.metrics(list(data.conclusions)))
    if data.convergence is not None:
        metrics.update(convergence.metrics(data.convergence.steps, data.convergence.targets))
    if data.lr_grid is not None:
        metrics.update(lr_grid.metrics(data.lr_grid.summary, data.lr_grid.best))
        if data.lr_grid.conclusions:
            metrics["lr_grid_conclusions"] = conclusions.metrics(data.lr_grid.conclusions)
    metrics.update(data.diagnostics.metrics if data.diagnostics else {})
    metrics.update(tuned.metrics(data.tuned) if data.tuned is not None else {})
    return metrics


def build_sections(runs: dict[RunKey, RunData], table: pd.DataFrame, tests: pd.DataFrame, params: Params,
                   uri: str, results_dir: Path, figures_dir: Path) -> report.ReportData:
    """Every section's numbers and figures (drawn into ``figures_dir``), as the report shows them."""
    names = results.draw_figures(runs, table, figures_dir, palette(params.variants))
    any_run = next(iter(runs.values()))
    return report.ReportData(
        table, tests, params, params.mlflow.experiment, report.store_label(uri), names,
        diagnostics.section(runs, params.variants, figures_dir, alpha=params.compare.alpha,
                            margin=params.compare.equivalence_margin), n_train=any_run.n_train, n_test=len(any_run.correct),
        conclusions=conclusions.judge_runs(runs, tests, params),
        convergence=convergence.section(runs, params, figures_dir),
        lr_grid=lr_grid.section(params, results_dir, uri, table, figures_dir),
        tuned=tuned.section(params, results_dir, uri, figures_dir))


def write_report(runs: dict[RunKey, RunData], table: pd.DataFrame, tests: pd.DataFrame, params: Params,
                 uri: str, reports: Path, results_dir: Path = paths.RESULTS) -> report.ReportData:
    """Stage every file of the report, then publish them together; returns what the report shows."""
    reports.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compare-", dir=reports))
    try:
        (staging / "figures").mkdir()
        data = build_sections(runs, table, tests, params, uri, results_dir, staging / "figures")
        data.metrics = metrics_summary(data)
        table.to_csv(staging / "comparison.csv", index=False)
        tests.to_csv(staging / "significance.csv", index=False)
        grid_tests = data.lr_grid.significance if data.lr_grid is not None else pd.DataFrame(columns=tests.columns)
        grid_tests.to_csv(staging / "lr_grid_significance.csv", index=False)
        tuned_tests = data.tuned.significance if data.tuned is not None and len(data.tuned.significance) else \
            pd.DataFrame(columns=tests.columns)
        tuned_tests.to_csv(staging / "tuned_significance.csv", index=False)
        write_overlays(runs, staging / "plots")
        (staging / "comparison.md").write_text(report.render(data))
        (staging / "metrics.json").write_text(json.dumps(data.metrics, indent=2) + "\n")
        _publish(staging, reports)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data


def log_summary_run(uri: str, experiment_id: str, data: report.ReportData, reports: Path, run_ids: list[str]) -> str:
    """The ``comparison`` run: tables, figures, and the report as its description, linked for the MLflow UI."""
    import mlflow

    # The store the runs were read from, not MLflow's cwd-relative default (a temporary
    # copy's empty mlflow.db under `dvc exp run --temp`).
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="comparison",
                          tags={"pipeline.kind": "comparison", "pipeline.runs": " ".join(run_ids)}) as run:
        links = report.Links.mlflow_ui(artifacts_run_id=run.info.run_id, experiment_id=experiment_id)
        mlflow.set_tag("mlflow.note.content", report.render_description(data, links, DESCRIPTION_LIMIT))
        mlflow.log_table(data=data.table, artifact_file="comparison_table.json")
        if not data.significance.empty:
            mlflow.log_table(data=data.significance, artifact_file="significance_table.json")
        for v in data.table.itertuples():
            mlflow.log_metric(f"{v.variant}.test_accuracy_mean", v.test_accuracy_mean)
            mlflow.log_metric(f"{v.variant}.test_loss_mean", v.test_loss_mean)
        log_findings(data)
        for name in ("comparison.md", "comparison.csv", "significance.csv"):
            mlflow.log_artifact(str(reports / name))
        mlflow.log_artifacts(str(reports / "figures"), artifact_path="figures")
    return run.info.run_id


def _log_nested(prefix: str, values: dict) -> None:
    """``{variant: {key: value}}`` as metrics ``<prefix><variant>.<key>`` (values that are None left out)."""
    import mlflow

    for name, per_key in values.items():
        mlflow.log_metrics({f"{prefix}{name}.{key}": v for key, v in per_key.items() if v is not None})


def log_findings(data: report.ReportData) -> None:
    """The numbers of ``metrics.json`` the UI should show (the conclusions' verdicts, steps to each target, the
    grid's best rates), the verdicts in words as tags, and the sections' tables."""
    import mlflow

    _log_nested("", {name: values for name, values in data.metrics.items() if name.startswith("conclusion_")})
    for n, judgement in enumerate(data.conclusions, start=1):
        mlflow.set_tag(f"conclusion_{n}", f"{judgement.claim} {judgement.verdict}")
    if data.convergence is not None:
        mlflow.log_table(data=data.convergence.steps, artifact_file="convergence_steps.json")
        _log_nested("", data.metrics.get("convergence", {}))
    if data.lr_grid is not None:
        grid = data.lr_grid
        mlflow.log_table(data=grid.summary, artifact_file="lr_grid_table.json")
        _log_nested("lr_grid.", data.metrics.get("lr_grid", {}))
        for n, judgement in enumerate(grid.conclusions, start=1):
            mlflow.set_tag(f"lr_grid.conclusion_{n}", f"{judgement.claim} {judgement.verdict}")
        mlflow.set_tag("lr_grid.ranking_holds", str(grid.study_order == grid.best_order).lower())


def compare(params_path: Path = paths.PARAMS, results_dir: Path = paths.RESULTS,
            reports: Path = paths.REPORTS) -> pd.DataFrame:
    """The report on the runs the records name; returns the variant table."""
    params = Params.load(params_path)
    variants, seeds = list(params.variants), params.seeds
    records = read_records(variants, seeds, results_dir)
    uri = store.tracking_uri()
    runs = fetch_runs(records, uri)
    check_records_match(records, runs)
    table = results.variant_table(runs, params.variants, params.compare.reference, params.compare.confidence)
    tests = significance.comparisons(runs, variants, seeds, params.compare)
    data = write_report(runs, table, tests, params, uri, reports, results_dir)
    experiment_id = str(next(iter(records.values()))["experiment_id"])
    summary_id = log_summary_run(uri, experiment_id, data, reports, [r.run_id for r in runs.values()])
    print((reports / "comparison.md").read_text())
    print(f"report: {reports / 'comparison.md'}; MLflow summary run {summary_id}")
    return table


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    run_main(compare)
