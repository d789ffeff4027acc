"""Stage ``compare``: the study's answer, built from MLflow's query API.

In: ``params.yaml`` (``variants``, ``seeds``, ``mlflow``, ``compare``) and the training
stages' records ``results/<variant>-s<seed>/record.json``: they name exactly the runs the
current pipeline state produced, so older and failed runs in the store never leak in.
The runs' params, metrics, metric histories and artifacts are read back from MLflow.
Out: ``reports/comparison.md`` and ``.csv`` (one row per variant), ``reports/figures/*.png``,
``reports/metrics.json`` (for ``dvc metrics``/``dvc exp show``), and a ``comparison`` run
in the same MLflow experiment holding the table and figures.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import figures, paths, stats, tracking
from pipeline import metric_names as M
from pipeline.cli import run_main
from pipeline.errors import UserError
from pipeline.params import CompareSettings, Params, VariantSpec

log = logging.getLogger("pipeline.compare")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass
class RunData:
    variant: str
    seed: int
    run_id: str
    test_loss: float
    test_accuracy: float
    train_seconds: float
    parameters: int
    correct: np.ndarray
    curves: pd.DataFrame                      # epoch, test_accuracy, test_loss
    n_train: int = 0
    bn: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)


def read_records(variants: list[str], seeds: list[int], results: Path = paths.RESULTS) -> dict[tuple[str, int], dict]:
    records = {}
    for v in variants:
        for s in seeds:
            path = results / f"{v}-s{s}" / "record.json"
            if not path.exists():
                raise UserError(f"no training record {path.relative_to(results.parent)}; "
                                f"run `dvc repro train@{v}-{s}` (or `dvc repro` for the whole study)")
            records[(v, s)] = json.loads(path.read_text())
    return records


def _check_store(uri: str) -> None:
    tracking.check_server(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri[len('sqlite:///'):]}; run `dvc repro` to train the variants first "
                        "(or set MLFLOW_TRACKING_URI to the store they were logged in)")


def fetch_runs(records: dict[tuple[str, int], dict], uri: str) -> dict[tuple[str, int], RunData]:
    """Read every recorded run back from MLflow; refuse unknown or unfinished runs."""
    import mlflow
    from mlflow.artifacts import download_artifacts

    _check_store(uri)
    client = mlflow.MlflowClient(uri)
    ids = {rec["run_id"]: key for key, rec in records.items()}
    experiments = sorted({str(rec["experiment_id"]) for rec in records.values()})
    quoted = ", ".join(f"'{i}'" for i in ids)
    found = client.search_runs(experiments, filter_string=f"attributes.run_id IN ({quoted})",
                               max_results=max(len(ids), 1))
    by_id = {r.info.run_id: r for r in found}
    out = {}
    with tempfile.TemporaryDirectory(prefix="lenet-compare-") as tmp:
        for run_id, (variant, seed) in ids.items():
            where = f"train@{variant}-{seed}"
            run = by_id.get(run_id)
            if run is None:
                raise UserError(f"run {run_id} ({variant}-s{seed}) is not in the MLflow store {tracking.redact(uri)}; "
                                f"was it trained against another store? Re-run `dvc repro -f {where}`")
            if run.info.status != "FINISHED":
                raise UserError(f"run {run_id} ({variant}-s{seed}) is {run.info.status}, not FINISHED; "
                                f"re-run `dvc repro -f {where}`")
            m = run.data.metrics
            missing = {M.TEST_LOSS, M.TEST_ACCURACY, M.TRAIN_SECONDS} - set(m)
            if missing:
                raise UserError(f"run {run_id} ({variant}-s{seed}) lacks metrics {sorted(missing)}")
            dst = Path(tmp) / run_id
            preds = pd.read_csv(download_artifacts(run_id=run_id, artifact_path="predictions.csv",
                                                   dst_path=str(dst), tracking_uri=uri))
            curves = pd.DataFrame({
                key: pd.Series({h.step: h.value for h in client.get_metric_history(run_id, M.EPOCH[key])})
                for key in ("test_accuracy", "test_loss")
            }).rename_axis("epoch").reset_index()
            bn = {}
            artifacts = {a.path for a in client.list_artifacts(run_id)}
            if "bn_weights" in artifacts:
                bn_dir = Path(download_artifacts(run_id=run_id, artifact_path="bn_weights", dst_path=str(dst),
                                                 tracking_uri=uri))
                for npz in sorted(bn_dir.glob("*.npz")):
                    with np.load(npz) as z:
                        bn[npz.stem] = {k: z[k] for k in z.files}
            diagnostics = {}
            if "diagnostics" in artifacts:
                diag = Path(download_artifacts(run_id=run_id, artifact_path="diagnostics", dst_path=str(dst),
                                               tracking_uri=uri))
                diagnostics = {"summary": json.loads((diag / "summary.json").read_text())}
                if (diag / "history.csv").exists():  # absent when covariate_shift was switched off
                    diagnostics["history"] = pd.read_csv(diag / "history.csv")
                if (diag / "fc1_activations.npy").exists():
                    diagnostics["fc1_activations"] = np.load(diag / "fc1_activations.npy")
            out[(variant, seed)] = RunData(
                variant=variant, seed=seed, run_id=run_id, test_loss=float(m[M.TEST_LOSS]),
                test_accuracy=float(m[M.TEST_ACCURACY]), train_seconds=float(m[M.TRAIN_SECONDS]),
                parameters=int(float(run.data.params.get("model.params_total", "nan"))),
                n_train=int(float(run.data.params.get("data.n_train", "0"))),
                correct=preds["correct"].to_numpy().astype(bool), curves=curves, bn=bn, diagnostics=diagnostics)
    return out


def variant_table(runs: dict[tuple[str, int], RunData], specs: dict[str, VariantSpec], reference: dict,
                  confidence: float) -> pd.DataFrame:
    rows = []
    for v, spec in specs.items():
        mine = [r for (name, _), r in sorted(runs.items()) if name == v]
        acc = [r.test_accuracy for r in mine]
        loss = [r.test_loss for r in mine]
        acc_mean, acc_std = stats.mean_std(acc)
        loss_mean, loss_std = stats.mean_std(loss)
        if len(mine) == 1:
            n_test = len(mine[0].correct)
            lo, hi = stats.wilson_interval(int(mine[0].correct.sum()), n_test, confidence)
            method = f"Wilson, {n_test} test images"
        else:
            lo, hi = stats.t_interval(acc, confidence)
            method = f"t across {len(mine)} seeds"
        ref = reference.get(v)
        rows.append({
            "variant": v, "changes": spec.describe(),
            "notebook_loss": ref.loss if ref else np.nan, "notebook_accuracy": ref.accuracy if ref else np.nan,
            "n_seeds": len(mine),
            "test_loss_mean": loss_mean, "test_loss_std": loss_std,
            "test_accuracy_mean": acc_mean, "test_accuracy_std": acc_std,
            "accuracy_ci_low": lo, "accuracy_ci_high": hi, "ci_method": method,
            "train_seconds_mean": float(np.mean([r.train_seconds for r in mine])),
            "parameters": mine[0].parameters,
            "run_ids": " ".join(r.run_id for r in mine),
        })
    return pd.DataFrame(rows).sort_values("test_accuracy_mean", ascending=False, kind="stable").reset_index(drop=True)


def comparisons(runs: dict[tuple[str, int], RunData], variants: list[str], seeds: list[int],
                settings: CompareSettings) -> pd.DataFrame:
    """Each pair the notebook compared, and every variant against the control."""
    control = settings.control
    pairs: list[tuple[str, str]] = []
    for pair in settings.pairs:
        a, b = pair
        if a in variants and b in variants and (a, b) not in pairs:
            pairs.append((a, b))
    if control in variants:
        pairs += [(v, control) for v in variants if v != control and (v, control) not in pairs]
    alpha = settings.alpha
    rows = []
    for a, b in pairs:
        acc_a = [runs[(a, s)].test_accuracy for s in seeds]
        acc_b = [runs[(b, s)].test_accuracy for s in seeds]
        tests = [stats.mcnemar(runs[(a, s)].correct, runs[(b, s)].correct) for s in seeds]
        mcnemar_p = max(t.p_value for t in tests)  # distinguishable only if every seed says so
        seed_p = stats.paired_t(acc_a, acc_b) if len(seeds) >= 3 else float("nan")
        rows.append({
            "a": a, "b": b, "diff_pp": 100 * (np.mean(acc_a) - np.mean(acc_b)),
            "only_a_right": int(np.mean([t.only_a for t in tests])), "only_b_right": int(np.mean([t.only_b for t in tests])),
            "mcnemar_p": mcnemar_p, "mcnemar_p_per_seed": " ".join(f"{t.p_value:.3g}" for t in tests),
            "seed_t_p": seed_p, "test": "paired t across seeds" if len(seeds) >= 3 else "McNemar (exact)",
            "p": seed_p if len(seeds) >= 3 else mcnemar_p,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = stats.holm(table["p"].tolist())
    table["verdict"] = [stats.verdict(r.a, r.b, r.diff_pp, r.p_holm, alpha) for r in table.itertuples()]
    return table


def _pm(mean: float, std: float, n: int, digits: int) -> str:
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _ref(x: float, digits: int) -> str:
    return "–" if pd.isna(x) else f"{x:.{digits}f}"


def render_markdown(table: pd.DataFrame, sig: pd.DataFrame, params: Params, seeds: list[int], uri: str,
                    experiment: str, figure_names: list[str], extra_sections: list[str], n_train: int,
                    n_test: int) -> str:
    train = params.train
    conf = int(round(100 * params.compare.confidence))
    alpha = params.compare.alpha
    lines = [
        "# LeNet-5 on MNIST: batch norm, dropout, both, or neither",
        "",
        f"Generated by `python -m pipeline.compare` from the MLflow runs of experiment `{experiment}` "
        f"(store `{tracking.redact(uri)}`) that the current pipeline state produced. "
        f"Seeds: {', '.join(map(str, seeds))}.",
        "",
        "## Results",
        "",
        f"| variant | what changes | notebook loss | notebook acc. | test loss | test accuracy | {conf}% interval | n | train s | parameters |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.variant} | {r.changes} | {_ref(r.notebook_loss, 4)} | {_ref(r.notebook_accuracy, 4)} "
            f"| {_pm(r.test_loss_mean, r.test_loss_std, r.n_seeds, 4)} "
            f"| {_pm(r.test_accuracy_mean, r.test_accuracy_std, r.n_seeds, 4)} "
            f"| {r.accuracy_ci_low:.4f}–{r.accuracy_ci_high:.4f} ({r.ci_method}) | {r.n_seeds} "
            f"| {r.train_seconds_mean:.0f} | {r.parameters:,} |")
    lines += ["", "MLflow runs: " + "; ".join(f"{r.variant}: {r.run_ids}" for r in table.itertuples()), ""]
    lines += [
        "## Which differences are real",
        "",
        "**Varied (the scientific settings):** where batch norm sits (input, hidden layers) and the dropout "
        "rates (input, hidden), as each variant's spec in `params.yaml` says; `plain` is the control with neither "
        "(and conv biases on).",
        "",
        f"**Held fixed:** SGD with learning rate {train.learning_rate:g} and momentum {train.momentum:g}, "
        f"batch size {train.batch_size}, {train.epochs} epoch{'s' if train.epochs > 1 else ''}, categorical "
        f"cross-entropy, pixels / 255, the same {n_train:,} training and {n_test:,} test images, and the same "
        f"seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}) for every variant.",
        "",
    ]
    if sig.empty:
        lines += ["No pairs to compare with the variants trained.", ""]
    else:
        lines += [
            "| comparison | difference (pp) | A right, B wrong | B right, A wrong | McNemar p | seeds: paired t p | Holm-adjusted p | verdict |",
            "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
        ]
        for r in sig.itertuples():
            seed_p = "–" if math.isnan(r.seed_t_p) else f"{r.seed_t_p:.2g}"
            lines.append(f"| {r.a} vs {r.b} | {r.diff_pp:+.2f} | {r.only_a_right} | {r.only_b_right} "
                         f"| {r.mcnemar_p_per_seed} | {seed_p} | {r.p_holm:.2g} | {r.verdict.split(' — ')[1]} |")
        lines += ["", "Verdicts:", ""] + [f"- {v}" for v in sig["verdict"]] + [""]
        if len(seeds) >= 3:
            how = ("With 3 or more seeds the verdict rests on a paired t-test of test accuracy across seeds, "
                   "which includes training noise; McNemar's exact test on the per-image predictions is shown per seed.")
        else:
            how = ("With fewer than 3 seeds the verdict rests on McNemar's exact test on the per-image test predictions "
                   f"(the largest p over seeds). It says whether the two trained networks differ on these {n_test:,} images; "
                   "it cannot see how much a different seed would move either one. "
                   "`dvc exp run -S 'seeds=[0,1,2]'` adds the test across seeds.")
        lines += [how + f" p-values are Holm-adjusted over the {len(sig)} comparisons; "
                  f"a difference is called real when the adjusted p < {alpha:g}.", ""]
    titles = {"curves.png": "Test accuracy and loss per epoch", "accuracy.png": "Final test accuracy with intervals",
              "bn_parameters.png": "Learned batch-norm gamma and beta"}
    lines += ["## Figures", ""]
    for name in figure_names:
        lines += [f"**{titles.get(name, name)}**", "", f"![{name}](figures/{name})", ""]
    for extra in extra_sections:
        lines += [extra, ""]
    return "\n".join(lines)


def draw_figures(runs: dict[tuple[str, int], RunData], table: pd.DataFrame, out: Path) -> list[str]:
    names = []
    curves = pd.concat([r.curves.assign(variant=r.variant, seed=r.seed) for r in runs.values()], ignore_index=True)
    figures.learning_curves(curves, out / "curves.png")
    names.append("curves.png")
    figures.accuracy_bars(table, out / "accuracy.png")
    names.append("accuracy.png")
    first_seed = min(s for _, s in runs)
    bn = {r.variant: r.bn for (v, s), r in runs.items() if s == first_seed and r.bn}
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


def log_summary_run(uri: str, experiment_id: str, table: pd.DataFrame, sig: pd.DataFrame, reports: Path,
                    run_ids: list[str]) -> str:
    import mlflow

    # The store the runs were read from, not MLflow's cwd-relative default (a temporary
    # copy's empty mlflow.db under `dvc exp run --temp`).
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="comparison",
                          tags={"pipeline.kind": "comparison", "pipeline.runs": " ".join(run_ids),
                                "mlflow.note.content": (reports / "comparison.md").read_text()}) as run:
        mlflow.log_table(data=table, artifact_file="comparison_table.json")
        if not sig.empty:
            mlflow.log_table(data=sig, artifact_file="significance_table.json")
        for v in table.itertuples():
            mlflow.log_metric(f"{v.variant}.test_accuracy_mean", v.test_accuracy_mean)
            mlflow.log_metric(f"{v.variant}.test_loss_mean", v.test_loss_mean)
        mlflow.log_artifact(str(reports / "comparison.md"))
        mlflow.log_artifact(str(reports / "comparison.csv"))
        mlflow.log_artifacts(str(reports / "figures"), artifact_path="figures")
    return run.info.run_id


def compare(params_path: Path = paths.PARAMS, results: Path = paths.RESULTS, reports: Path = paths.REPORTS) -> pd.DataFrame:
    params = Params.load(params_path)
    variants = list(params.variants)
    specs = params.variants
    seeds = params.seeds
    records = read_records(variants, seeds, results)
    uri = tracking.tracking_uri()
    runs = fetch_runs(records, uri)
    for key, rec in records.items():
        r = runs[key]
        if not math.isclose(rec["test_accuracy"], r.test_accuracy, rel_tol=1e-9):
            raise UserError(f"{key[0]}-s{key[1]}: record says test_accuracy {rec['test_accuracy']}, MLflow run "
                            f"{r.run_id} says {r.test_accuracy}; re-run `dvc repro -f train@{key[0]}-{key[1]}`")
    table = variant_table(runs, specs, params.compare.reference, params.compare.confidence)
    sig = comparisons(runs, variants, seeds, params.compare)
    experiment = params.mlflow.experiment

    from pipeline import diagnostics_report

    reports.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".compare-", dir=reports))
    try:
        (staging / "figures").mkdir()
        names = draw_figures(runs, table, staging / "figures")
        extra, _, diag_metrics = diagnostics_report.section(runs, staging / "figures")
        table.to_csv(staging / "comparison.csv", index=False)
        any_run = next(iter(runs.values()))
        (staging / "comparison.md").write_text(
            render_markdown(table, sig, params, seeds, uri, experiment, names, [extra] if extra else [],
                            n_train=any_run.n_train, n_test=len(any_run.correct)))
        metrics = {r.variant: {"test_accuracy": round(r.test_accuracy_mean, 6), "test_loss": round(r.test_loss_mean, 6),
                               "n_seeds": r.n_seeds} for r in table.itertuples()}
        if not sig.empty:
            metrics["significance"] = {f"{r.a}_vs_{r.b}": {"diff_pp": round(r.diff_pp, 4), "p_holm": round(r.p_holm, 6)}
                                       for r in sig.itertuples()}
        metrics.update(diag_metrics)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _publish(staging, reports)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    experiment_id = str(next(iter(records.values()))["experiment_id"])
    summary_id = log_summary_run(uri, experiment_id, table, sig, reports, [r.run_id for r in runs.values()])
    print((reports / "comparison.md").read_text())
    print(f"report: {reports / 'comparison.md'}; MLflow summary run {summary_id}")
    return table


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    run_main(compare)


if __name__ == "__main__":
    main()
