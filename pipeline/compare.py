"""Stage ``compare``: the study's answer, built from MLflow's query API.

In: ``params.yaml`` (``variants``, ``seeds``, ``mlflow``, ``compare``) and the training
stages' records ``results/<variant>-s<seed>/record.json``: they name exactly the runs the
current pipeline state produced, so older and failed runs in the store never leak in.
The runs' params, metrics, metric histories and artifacts are read back from MLflow
(``pipeline.runs``).
Out: ``reports/comparison.md`` (rendered by ``pipeline.report``: the notebook's conclusions judged
(``pipeline.conclusions``), the results, which differences are real, convergence speed
(``pipeline.convergence_report``), learning-rate sensitivity when ``lr_grid.learning_rates`` is set
(``pipeline.lr_report``, from ``results/lr_grid/``), figures, diagnostics), ``comparison.csv`` (one row per
variant), ``significance.csv`` (one row per compared pair, with its verdict),
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

import numpy as np
import pandas as pd

from pipeline import (conclusions, convergence_report, diagnostics_report, figures, lr_report, paths, report, stats,
                      tracking)
from pipeline.cli import run_main
from pipeline.params import CompareSettings, Params, VariantSpec
from pipeline.runs import RunData, RunKey, check_records_match, fetch_grid, fetch_runs, read_records

log = logging.getLogger("pipeline.compare")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DESCRIPTION_LIMIT = 8000  # MLflow truncates a tag value (the run description is one) beyond this many characters
SIGNIFICANCE_COLUMNS = ["a", "b", "diff_pp", "only_a_right", "only_b_right", "mcnemar_p", "mcnemar_p_per_seed",
                        "seed_t_p", "test", "p", "p_holm", "verdict"]


def variant_table(runs: dict[RunKey, RunData], specs: dict[str, VariantSpec], reference: dict,
                  confidence: float) -> pd.DataFrame:
    """The results table: a row per variant (mean and std over seeds, accuracy interval), best first."""
    rows = []
    for variant, spec in specs.items():
        variant_runs = [run for (name, _), run in sorted(runs.items()) if name == variant]
        accuracy = [run.test_accuracy for run in variant_runs]
        accuracy_mean, accuracy_std = stats.mean_std(accuracy)
        loss_mean, loss_std = stats.mean_std([run.test_loss for run in variant_runs])
        if len(variant_runs) == 1:
            n_test = len(variant_runs[0].correct)
            ci_low, ci_high = stats.wilson_interval(int(variant_runs[0].correct.sum()), n_test, confidence)
            ci_method = f"Wilson, {n_test} test images"
        else:
            ci_low, ci_high = stats.t_interval(accuracy, confidence)
            ci_method = f"t across {len(variant_runs)} seeds"
        notebook = reference.get(variant)
        rows.append({
            "variant": variant, "changes": spec.describe(),
            "notebook_loss": notebook.loss if notebook else np.nan,
            "notebook_accuracy": notebook.accuracy if notebook else np.nan,
            "n_seeds": len(variant_runs),
            "test_loss_mean": loss_mean, "test_loss_std": loss_std,
            "test_accuracy_mean": accuracy_mean, "test_accuracy_std": accuracy_std,
            "accuracy_ci_low": ci_low, "accuracy_ci_high": ci_high, "ci_method": ci_method,
            "train_seconds_mean": float(np.mean([run.train_seconds for run in variant_runs])),
            "parameters": variant_runs[0].parameters,
            "run_ids": " ".join(run.run_id for run in variant_runs),
        })
    return pd.DataFrame(rows).sort_values("test_accuracy_mean", ascending=False, kind="stable").reset_index(drop=True)


def compared_pairs(variants: list[str], settings: CompareSettings) -> list[tuple[str, str]]:
    """Each pair the notebook compared and each pair its conclusions rest on (where both were trained),
    then every variant against the control; a pair is compared once, in its first orientation."""
    pairs: list[tuple[str, str]] = []
    claimed = [pair for conclusion in settings.conclusions for pair in conclusion.holds_if]
    for a, b in [*settings.pairs, *claimed]:
        if a in variants and b in variants and (a, b) not in pairs and (b, a) not in pairs:
            pairs.append((a, b))
    control = settings.control
    if control in variants:
        pairs += [(v, control) for v in variants if v != control and (v, control) not in pairs]
    return pairs


def comparisons(runs: dict[RunKey, RunData], variants: list[str], seeds: list[int],
                settings: CompareSettings) -> pd.DataFrame:
    """The significance table: a row per compared pair, with its test, Holm-adjusted p and verdict."""
    rows = []
    for a, b in compared_pairs(variants, settings):
        accuracy_a = [runs[(a, seed)].test_accuracy for seed in seeds]
        accuracy_b = [runs[(b, seed)].test_accuracy for seed in seeds]
        per_seed = [stats.mcnemar(runs[(a, seed)].correct, runs[(b, seed)].correct) for seed in seeds]
        mcnemar_p = max(test.p_value for test in per_seed)  # distinguishable only if every seed says so
        across_seeds = len(seeds) >= 3
        seed_t_p = stats.paired_t(accuracy_a, accuracy_b) if across_seeds else float("nan")
        rows.append({
            "a": a, "b": b, "diff_pp": 100 * (np.mean(accuracy_a) - np.mean(accuracy_b)),
            "only_a_right": int(np.mean([test.only_a for test in per_seed])),
            "only_b_right": int(np.mean([test.only_b for test in per_seed])),
            "mcnemar_p": mcnemar_p, "mcnemar_p_per_seed": " ".join(f"{test.p_value:.3g}" for test in per_seed),
            "seed_t_p": seed_t_p, "test": "paired t across seeds" if across_seeds else "McNemar (exact)",
            "p": seed_t_p if across_seeds else mcnemar_p,
        })
    table = pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS[:-2])
    table["p_holm"] = stats.holm(table["p"].tolist()) if rows else []
    table["verdict"] = [stats.verdict(r.a, r.b, r.diff_pp, r.p_holm, settings.alpha) for r in table.itertuples()]
    return table


def draw_figures(runs: dict[RunKey, RunData], table: pd.DataFrame, out: Path) -> list[str]:
    """The report's main figures (batch-norm weights of the first seed only); returns their file names."""
    names = []
    curves = pd.concat([r.curves.assign(variant=r.variant, seed=r.seed) for r in runs.values()], ignore_index=True)
    figures.learning_curves(curves, out / "curves.png")
    names.append("curves.png")
    figures.accuracy_bars(table, out / "accuracy.png")
    names.append("accuracy.png")
    first_seed = min(seed for _, seed in runs)
    bn = {run.variant: run.bn for (_, seed), run in runs.items() if seed == first_seed and run.bn}
    if bn:
        figures.bn_distributions(bn, out / "bn_parameters.png")
        names.append("bn_parameters.png")
    return names


def _publish(staging: Path, reports: Path) -> None:
    """Move the staged report into place: figures as a whole, then the files."""
    reports.mkdir(parents=True, exist_ok=True)
    if (reports / "figures").exists():
        shutil.rmtree(reports / "figures")
    os.replace(staging / "figures", reports / "figures")
    for item in staging.iterdir():
        os.replace(item, reports / item.name)


def judge_conclusions(runs: dict[RunKey, RunData], significance: pd.DataFrame, params: Params
                      ) -> list[conclusions.Judgement]:
    """The notebook's conclusions (``compare.conclusions``) against the study's runs."""
    accuracy: dict[str, list[float]] = {}
    for (variant, _), run in sorted(runs.items()):
        accuracy.setdefault(variant, []).append(run.test_accuracy)
    settings = params.compare
    return conclusions.judge(settings.conclusions, significance, accuracy, settings.alpha, settings.confidence)


def convergence_speed(runs: dict[RunKey, RunData], params: Params, figures_dir: Path) -> report.Convergence | None:
    """Steps to each target accuracy per variant, the curves' figure, and what measuring them cost;
    None when no run measured convergence."""
    measured = {key: run for key, run in runs.items() if len(run.convergence)}
    if not measured:
        return None
    curves = {key: run.convergence for key, run in measured.items()}
    targets = params.convergence.targets
    steps = convergence_report.steps_table(curves, list(params.variants), targets)
    convergence_report.figure(curves, figures_dir / "convergence.png", targets, params.convergence.images)
    share = float(np.nanmean([run.convergence_seconds / run.train_seconds for run in measured.values()]))
    return report.Convergence(steps, targets, "convergence.png", share, len(measured))


def learning_rate_sensitivity(params: Params, results: Path, uri: str, table: pd.DataFrame, figures_dir: Path
                              ) -> report.LrGrid | None:
    """The learning-rate grid's section: each variant's best rate on the validation images, then (only
    then) the test accuracy there and the notebook's conclusions judged there; None without a grid."""
    rates = params.lr_grid.learning_rates
    if not rates:
        return None
    variants, seeds = list(params.variants), params.seeds
    records = read_records(variants, seeds, results, rates)
    grid = fetch_grid(records, uri)
    summary = lr_report.summary(grid, variants)
    best = lr_report.best_rates(summary)
    lr_report.figure(summary, best, figures_dir / "learning_rates.png", params.lr_grid.validation_images)
    chosen = {variant: rate for variant, rate in best.items() if rate is not None}
    # The grid's metrics above were enough to choose; the comparisons at the chosen rates also need each
    # run's per-image predictions, so only those runs are read again, in full.
    best_records = {key: record for key, record in records.items() if chosen.get(key[0]) == float(key[2])}
    best_runs = {key[:2]: run for key, run in fetch_runs(best_records, uri).items()}
    at_best = summary.merge(pd.DataFrame({"variant": list(chosen), "rate": list(chosen.values())}))
    at_best = at_best[["variant", "rate", "n_seeds", "test_accuracy_mean", "test_accuracy_std"]]
    significance = comparisons(best_runs, list(chosen), seeds, params.compare) if best_runs else pd.DataFrame()
    judgements = judge_conclusions(best_runs, significance, params) if best_runs else []
    diverged = [f"{r.variant}-s{r.seed}-lr{r.rate:g}" for r in grid if r.diverged]
    return report.LrGrid(summary, best, at_best, [v for v in table["variant"] if v in chosen],
                         lr_report.ranking(dict(zip(at_best["variant"], at_best["test_accuracy_mean"]))),
                         judgements, diverged, "learning_rates.png", params.lr_grid.validation_images, len(grid))


def metrics_summary(table: pd.DataFrame, significance: pd.DataFrame, diagnostics,
                    judgements: list[conclusions.Judgement] = (), convergence: report.Convergence | None = None,
                    lr_grid: report.LrGrid | None = None) -> dict:
    """What ``reports/metrics.json`` holds for ``dvc metrics``: rounded means, verdict numbers, the conclusions'
    verdicts, steps to the target accuracies, diagnostics."""
    metrics = {r.variant: {"test_accuracy": round(r.test_accuracy_mean, 6), "test_loss": round(r.test_loss_mean, 6),
                           "n_seeds": r.n_seeds} for r in table.itertuples()}
    if not significance.empty:
        metrics["significance"] = {f"{r.a}_vs_{r.b}": {"diff_pp": round(r.diff_pp, 4), "p_holm": round(r.p_holm, 6)}
                                   for r in significance.itertuples()}
    metrics.update(conclusions.metrics(list(judgements)))
    if convergence is not None:
        metrics.update(convergence_report.metrics(convergence.steps, convergence.targets))
    if lr_grid is not None:
        metrics.update(lr_report.metrics(lr_grid.summary, lr_grid.best))
        if lr_grid.conclusions:
            metrics["lr_grid_conclusions"] = conclusions.metrics(lr_grid.conclusions)
    metrics.update(diagnostics.metrics if diagnostics else {})
    return metrics


def write_report(runs: dict[RunKey, RunData], table: pd.DataFrame, significance: pd.DataFrame, params: Params,
                 uri: str, reports: Path, results: Path = paths.RESULTS) -> report.ReportData:
    """Stage every file of the report, then publish them together; returns what the report shows."""
    reports.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compare-", dir=reports))
    try:
        (staging / "figures").mkdir()
        names = draw_figures(runs, table, staging / "figures")
        diagnostics = diagnostics_report.build(runs, params.variants, staging / "figures")
        judgements = judge_conclusions(runs, significance, params)
        convergence = convergence_speed(runs, params, staging / "figures")
        lr_grid = learning_rate_sensitivity(params, results, uri, table, staging / "figures")
        any_run = next(iter(runs.values()))
        data = report.ReportData(table, significance, params, params.mlflow.experiment, report.store_label(uri),
                                 names, diagnostics, n_train=any_run.n_train, n_test=len(any_run.correct),
                                 conclusions=judgements, convergence=convergence, lr_grid=lr_grid)
        table.to_csv(staging / "comparison.csv", index=False)
        significance.to_csv(staging / "significance.csv", index=False)
        (staging / "comparison.md").write_text(report.render(data))
        metrics = metrics_summary(table, significance, diagnostics, judgements, convergence, lr_grid)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
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


def log_findings(data: report.ReportData) -> None:
    """The conclusions' verdicts (as numbers, and as tags in words) and the steps to each target accuracy."""
    import mlflow

    for name, values in conclusions.metrics(data.conclusions).items():
        mlflow.log_metrics({f"{name}.{key}": value for key, value in values.items()})
    for n, judgement in enumerate(data.conclusions, start=1):
        mlflow.set_tag(f"conclusion_{n}", f"{judgement.claim} {judgement.verdict}")
    if data.convergence is not None:
        mlflow.log_table(data=data.convergence.steps, artifact_file="convergence_steps.json")
        for variant, values in convergence_report.metrics(data.convergence.steps, data.convergence.targets
                                                          ).get("convergence", {}).items():
            mlflow.log_metrics({f"{variant}.{key}": value for key, value in values.items() if value is not None})
    if data.lr_grid is not None:
        grid = data.lr_grid
        mlflow.log_table(data=grid.summary, artifact_file="lr_grid_table.json")
        for variant, values in lr_report.metrics(grid.summary, grid.best).get("lr_grid", {}).items():
            mlflow.log_metrics({f"lr_grid.{variant}.{key}": value for key, value in values.items() if value is not None})
        for n, judgement in enumerate(grid.conclusions, start=1):
            mlflow.set_tag(f"lr_grid.conclusion_{n}", f"{judgement.claim} {judgement.verdict}")
        mlflow.set_tag("lr_grid.ranking_holds", str(grid.study_order == grid.best_order).lower())


def compare(params_path: Path = paths.PARAMS, results: Path = paths.RESULTS, reports: Path = paths.REPORTS) -> pd.DataFrame:
    """The report on the runs the records name; returns the variant table."""
    params = Params.load(params_path)
    variants, seeds = list(params.variants), params.seeds
    records = read_records(variants, seeds, results)
    uri = tracking.tracking_uri()
    runs = fetch_runs(records, uri)
    check_records_match(records, runs)
    table = variant_table(runs, params.variants, params.compare.reference, params.compare.confidence)
    significance = comparisons(runs, variants, seeds, params.compare)
    data = write_report(runs, table, significance, params, uri, reports, results)
    experiment_id = str(next(iter(records.values()))["experiment_id"])
    summary_id = log_summary_run(uri, experiment_id, data, reports, [r.run_id for r in runs.values()])
    print((reports / "comparison.md").read_text())
    print(f"report: {reports / 'comparison.md'}; MLflow summary run {summary_id}")
    return table


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run_main(compare)


if __name__ == "__main__":
    main()
