"""The compare stage against runs logged by the real training code.

A temporary SQLite store gets tiny real trainings (300 train / 200 test images, 1 epoch,
diagnostics every optimizer step) of three variants; records are written the way the DVC
train stages write them. The report's numbers are checked against the runs read back
independently through MLflow (numbers through ``comparison.csv`` and ``significance.csv``,
the Markdown only for its text), and its refusals (stale, failed, missing, inconsistent
runs) one by one. The ``comparison`` run's description is checked against a real
``mlflow server``: every figure it shows is fetched the way the MLflow UI fetches it.
Trainings are shared through module-scoped fixtures.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import json
import math
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

from conftest import ROOT, holm_by_definition, tiny_params
from pipeline.core import metric_names as M
from pipeline.compare import evidence, stats
from pipeline.compare.stage import DESCRIPTION_LIMIT, compare
from pipeline.compare.report import store_label
from pipeline.core.errors import UserError
from pipeline.train.stage import train

TRAIN_LIMIT, TEST_LIMIT = 300, 200
EXPERIMENT = "test-study"
VARIANTS = ["plain", "bn_hidden", "dropout"]
# bn_all is not trained here: its pair must be dropped, not fail.
PAIRS = [["bn_hidden", "dropout"], ["bn_hidden", "bn_all"]]
# the notebook's pairs, then those the claims rest on (CLAIMS below), then every variant against the control
EXPECTED_PAIRS = [("bn_hidden", "dropout"), ("dropout", "plain"), ("bn_hidden", "plain")]
FIGURES = {"curves.png", "accuracy.png", "bn_parameters.png", "convergence.png", "covariate_shift.png",
           "covariate_shift_unit.png", "coadaptation.png", "variance_shift.png"}
DIAGNOSTICS_FIGURES = {"covariate_shift.png", "covariate_shift_unit.png", "coadaptation.png", "variance_shift.png"}
# Claims the three trained variants can judge, and one they cannot (bn_all is not trained).
CLAIMS = [{"claim": "Batch norm beats dropout.", "holds_if": [["bn_hidden", "dropout"]]},
          {"claim": "Dropout beats the control.", "holds_if": [["dropout", "plain"]]},
          {"claim": "Batch norm on the input helps.", "holds_if": [["bn_all", "bn_hidden"]]}]
PNG = b"\x89PNG\r\n\x1a\n"
COMPARISON_FILTER = "tags.`pipeline.kind` = 'comparison'"

slow = pytest.mark.slow


def study_params(variants: list[str], seeds: list[int], pairs: list) -> dict:
    params = tiny_params(train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT)
    params["variants"] = {v: params["variants"][v] for v in variants}
    params["seeds"] = list(seeds)
    params["compare"]["pairs"] = pairs
    params["diagnostics"].update({"enabled": True, "probe_size": 64, "every_n_batches": 1,
                                  "variance_shift_images": TEST_LIMIT})
    params["convergence"].update({"every_steps": 1, "images": TEST_LIMIT, "targets": [0.2, 0.999]})
    params["compare"]["conclusions"] = CLAIMS
    return params


@dataclasses.dataclass
class Study:
    root: Path
    uri: str
    params_path: Path
    params: dict
    prepared: Path
    results: Path
    client: mlflow.MlflowClient
    experiment_id: str
    records: dict[str, dict]      # variant -> the seed-0 record
    stale_run_id: str             # a newer plain-s0 run that no record names

    def train(self, variant: str, seed: int = 0, **kw) -> dict:
        kw.setdefault("params_path", self.params_path)
        return train(variant, seed, prepared=self.prepared, **kw).record

    def comparison_runs(self) -> set[str]:
        return {r.info.run_id for r in self.client.search_runs([self.experiment_id], COMPARISON_FILTER)}

    def predictions(self, run_id: str) -> pd.DataFrame:
        dst = self.root / "downloads" / run_id
        if not (dst / "predictions.csv").exists():
            dst.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="predictions.csv", dst_path=str(dst),
                                                tracking_uri=self.uri)
        return pd.read_csv(dst / "predictions.csv")

    def results_copy(self, dest: Path) -> Path:
        shutil.copytree(self.results, dest)
        return dest


@pytest.fixture(scope="module")
def study(tmp_path_factory, prepared_fixture):
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root}/mlflow.db"
    params = study_params(VARIANTS, [0], PAIRS)
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME"):
            mp.delenv(var, raising=False)
        mp.chdir(root)  # nothing may fall back to a store in the real project
        results = root / "results"
        records = {}
        for v in VARIANTS:
            records[v] = train(v, 0, record_dir=results / f"{v}-s0", dvc_stage=f"train@{v}-0",
                               params_path=params_path, prepared=prepared_fixture).record
        # The same stage rerun by hand, without a record: newer, and different (fewer images).
        stale = train("plain", 0, overrides={"train_limit": 100}, params_path=params_path,
                      prepared=prepared_fixture).record
        client = mlflow.MlflowClient(uri)
        yield Study(root, uri, params_path, params, prepared_fixture, results, client,
                    records["plain"]["experiment_id"], records, stale["run_id"])
        assert mlflow.active_run() is None
        # Forget this store (set_tracking_uri also writes MLFLOW_TRACKING_URI, which the
        # monkeypatch then restores): later tests see MLflow as they found it.
        mlflow.set_tracking_uri(None)


@dataclasses.dataclass
class Report:
    table: pd.DataFrame
    dir: Path
    summary: object              # the comparison run
    significance: pd.DataFrame   # its significance table, as logged
    significance_csv: pd.DataFrame  # reports/significance.csv
    csv: pd.DataFrame            # reports/comparison.csv
    md: str
    metrics: dict


def _report(study: Study, params_path: Path, results: Path, reports: Path) -> Report:
    before = study.comparison_runs()
    table = compare(params_path, results, reports)
    new = study.comparison_runs() - before
    assert len(new) == 1, new
    summary = study.client.get_run(new.pop())
    significance = study.client.load_table(study.experiment_id, "significance_table.json",
                                           run_ids=[summary.info.run_id])
    return Report(table, reports, summary, significance, pd.read_csv(reports / "significance.csv", dtype={"mcnemar_p_per_seed": str}),
                  pd.read_csv(reports / "comparison.csv"), (reports / "comparison.md").read_text(),
                  json.loads((reports / "metrics.json").read_text()))


@pytest.fixture(scope="module")
def report(study) -> Report:
    return _report(study, study.params_path, study.results, study.root / "reports")


def _row(table: pd.DataFrame, variant: str):
    rows = table[table["variant"] == variant]
    assert len(rows) == 1, variant
    return rows.iloc[0]


def _results_section(md: str) -> str:
    return md.split("## Results")[1].split("## Which differences are real")[0]


def _md_line(md: str, prefix: str) -> str:
    """The one line of ``md`` starting with ``prefix`` (a table row, found by its first cell)."""
    lines = [line for line in md.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, (prefix, lines)
    return lines[0]


def _correct(study: Study, run_id: str) -> np.ndarray:
    return study.predictions(run_id)["correct"].to_numpy().astype(bool)


# --- the table -------------------------------------------------------------------------------


@slow
def test_table_numbers_are_the_recorded_runs(study, report):
    for v in VARIANTS:
        run_id = study.records[v]["run_id"]
        run = study.client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == f"{v}-s0"
        row = _row(report.table, v)
        assert row["run_ids"] == run_id
        assert row["n_seeds"] == 1
        assert row["test_accuracy_mean"] == run.data.metrics[M.TEST_ACCURACY]
        assert row["test_loss_mean"] == run.data.metrics[M.TEST_LOSS]
        assert row["test_accuracy_std"] == 0 and row["test_loss_std"] == 0
        assert row["train_seconds_mean"] == run.data.metrics[M.TRAIN_SECONDS]
        assert row["parameters"] == int(run.data.params["model.params_total"])
    assert _row(report.table, "plain")["parameters"] == 545_546
    assert _row(report.table, "bn_hidden")["changes"].startswith("BN on hidden")


@slow
def test_table_has_one_row_per_variant_sorted_by_accuracy(report):
    assert sorted(report.table["variant"]) == sorted(VARIANTS)
    acc = report.table["test_accuracy_mean"].tolist()
    assert acc == sorted(acc, reverse=True)
    assert len(set(acc)) > 1  # the order is not vacuous


@slow
def test_notebook_reference_columns_come_from_params(study, report):
    reference = study.params["compare"]["reference"]
    for v in ("bn_hidden", "dropout"):
        row = _row(report.table, v)
        assert row["notebook_loss"] == reference[v]["loss"]
        assert row["notebook_accuracy"] == reference[v]["accuracy"]
    plain = _row(report.table, "plain")
    assert math.isnan(plain["notebook_loss"]) and math.isnan(plain["notebook_accuracy"])


@slow
def test_accuracy_interval_from_the_predictions_artifact(study, report):
    """One seed: the interval is the test images' alone (a t interval over the per-image correctness)."""
    for v in VARIANTS:
        correct = _correct(study, study.records[v]["run_id"])
        assert len(correct) == TEST_LIMIT
        assert correct.mean() == pytest.approx(study.records[v]["test_accuracy"], abs=1e-6)
        row = _row(report.table, v)
        lo, hi = sps.t.interval(0.95, len(correct) - 1, loc=correct.mean(), scale=sps.sem(correct.astype(float)))
        assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == pytest.approx((lo, hi), rel=1e-9)
        assert row["accuracy_ci_low"] < row["test_accuracy_mean"] < row["accuracy_ci_high"]
        assert row["ci_method"] == f"{TEST_LIMIT} test images, one seed"


# --- the report files ------------------------------------------------------------------------


@slow
def test_csv_equals_the_returned_table(report):
    csv = pd.read_csv(report.dir / "comparison.csv")
    pd.testing.assert_frame_equal(csv, report.table, check_dtype=False, check_exact=False, rtol=1e-12)


@slow
def test_csv_notebook_columns_and_run_ids(study, report):
    csv = report.csv.set_index("variant")
    assert csv.loc["bn_hidden", "notebook_accuracy"] == 0.9875
    assert math.isnan(csv.loc["plain", "notebook_accuracy"]) and math.isnan(csv.loc["plain", "notebook_loss"])
    for v in VARIANTS:
        assert csv.loc[v, "run_ids"] == study.records[v]["run_id"]
        assert csv.loc[v, "changes"] == _row(report.table, v)["changes"]


@slow
def test_markdown_shows_the_csv(report):
    """Each variant's row of the results table shows the CSV's numbers (whatever the column widths)."""
    results = _results_section(report.md)
    for r in report.csv.itertuples():
        line = _md_line(results, f"| {r.variant} ")
        shown = [cell.strip() for cell in line.strip("|").split("|")]
        for value in (r.changes, f"{r.test_loss_mean:.4f}", f"{r.test_accuracy_mean:.4f}",
                      f"{r.accuracy_ci_low:.4f}–{r.accuracy_ci_high:.4f} ({r.ci_method})",
                      f"{r.train_seconds_mean:.0f}", f"{r.parameters:,}"):
            assert value in shown, (value, line)
        notebook = "–" if math.isnan(r.notebook_accuracy) else f"{r.notebook_accuracy:.4f}"
        assert notebook in shown, line
        assert f"{r.variant}: {r.run_ids}" in report.md


@slow
def test_markdown_has_every_variant_and_every_verdict(study, report):
    md = report.md
    assert md.startswith("# LeNet-5 on MNIST")
    assert sorted(line.split("|")[1].strip() for line in _results_section(md).splitlines()
                  if line.startswith("| ") and not line.startswith("| variant ")) == sorted(VARIANTS)
    verdicts = [line[2:] for line in md.splitlines() if line.startswith("- ") and " vs " in line and "Holm p = " in line]
    assert [tuple(v.split(":")[0].split(" vs ")) for v in verdicts] == EXPECTED_PAIRS
    for v in verdicts:
        assert re.fullmatch(r"\w+ vs \w+: [+-]\d+\.\d\d pp \(\d+\.\d% interval [+-]\d+\.\d\d to [+-]\d+\.\d\d pp\), "
                            r"Holm p = \S+ — (\w+ better|equivalent|inconclusive)( \(smallest difference .*\))?", v), v
    calls = [v.split(" — ")[1].split(" (")[0] for v in verdicts]
    assert calls == report.significance_csv["call"].tolist() == report.significance["call"].tolist()
    assert report.significance["verdict"].tolist() == report.significance_csv["verdict"].tolist()
    assert "bn_all" not in md.split("## Which differences are real")[1].split("## Figures")[0]
    assert "McNemar's exact p per seed" in md and "**The setting these verdicts hold for:**" in md
    for name in FIGURES:
        assert f"(figures/{name})" in md


@slow
def test_the_report_names_no_machine_path(study, report):
    assert "(store `…/mlflow.db`)" in report.md  # the test store lies outside the project
    assert str(study.root) not in report.md and "sqlite://" not in report.md
    description = report.summary.data.tags["mlflow.note.content"]
    assert str(study.root) not in description and "sqlite://" not in description


def test_store_label_has_no_machine_path(tmp_path):
    assert store_label(f"sqlite:///{tmp_path}/mlflow.db", root=tmp_path) == "mlflow.db"
    assert store_label(f"sqlite:///{tmp_path}/stores/a.db", root=tmp_path) == "stores/a.db"
    assert store_label(f"sqlite:///{tmp_path}/mlflow.db", root=tmp_path / "project") == "…/mlflow.db"
    assert store_label("http://alice:s3cret@tracking.example:5000", root=tmp_path) == "http://***@tracking.example:5000"
    assert store_label("http://127.0.0.1:5000", root=tmp_path) == "http://127.0.0.1:5000"


@slow
def test_metrics_json_equals_the_table(report):
    m = report.metrics
    for r in report.table.itertuples():
        assert m[r.variant] == {"test_accuracy": round(r.test_accuracy_mean, 6),
                                "test_loss": round(r.test_loss_mean, 6), "n_seeds": 1}
    acc = dict(zip(report.table["variant"], report.table["test_accuracy_mean"]))
    assert sorted(m["significance"]) == sorted(f"{a}_vs_{b}" for a, b in EXPECTED_PAIRS)
    for a, b in EXPECTED_PAIRS:
        assert m["significance"][f"{a}_vs_{b}"]["diff_pp"] == pytest.approx(100 * (acc[a] - acc[b]), abs=1e-4)
    assert sorted(m["convergence"]) == sorted(VARIANTS)
    assert sorted(m) == sorted([*VARIANTS, "significance", "conclusion_1", "conclusion_2", "convergence", "diagnostics"])
    assert sorted(m["diagnostics"]["coadaptation_fc1"]) == sorted(VARIANTS)
    assert sorted(m["diagnostics"]["variance_shift_mean"]) == ["bn_hidden"]  # the only variant with BN


@slow
def test_each_run_logs_its_diagnostics(study):
    """What one training run records: covariate shift and co-adaptation at every checkpoint (here every
    step), the same numbers in diagnostics/history.csv, final measures that agree with the
    saved fc1 activations, a variance-shift metric per BN layer."""
    from pipeline.measures.coadaptation import mean_abs_correlation

    run_id = study.records["bn_hidden"]["run_id"]
    run = study.client.get_run(run_id)
    dst = study.root / "downloads" / run_id
    diag = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="diagnostics", dst_path=str(dst),
                                                    tracking_uri=study.uri))
    assert {p.name for p in diag.iterdir()} == {"history.csv", "summary.json", "covariate_shift.png",
                                                "fc1_activations.npy", "recalibrated_predictions.csv"}
    # a network with batch norm is tested again after BN re-estimation: one 0/1 per test image
    again = pd.read_csv(diag / "recalibrated_predictions.csv")["correct"]
    assert len(again) == TEST_LIMIT and set(again.unique()) <= {0, 1}
    steps = -(-TRAIN_LIMIT // study.params["train"]["batch_size"]) * study.params["train"]["epochs"]
    history = pd.read_csv(diag / "history.csv")
    assert history["step"].tolist() == list(range(steps + 1))  # every step, and the end of training
    # the pooled points, then one typical unit (unit 0 of fc1's tanh input) as Ioffe & Szegedy's Fig. 1 shows
    points = ["conv1_bn", "conv1_tanh", "conv2_bn", "conv2_tanh", "conv3_bn", "conv3_tanh", "fc1_bn", "fc1_tanh",
              "fc1_tanh_unit0"]
    assert list(history.columns) == ["step"] + [f"{p}.{s}" for p in points for s in ("p15", "p50", "p85", "mean",
                                                                                       "log_std")]
    for key in ("conv2_tanh.p15", "fc1_bn.p85", "conv1_tanh.log_std"):
        logged = sorted(study.client.get_metric_history(run_id, M.covariate_shift(key)), key=lambda m: m.step)
        assert [m.step for m in logged] == history["step"].tolist(), key
        np.testing.assert_allclose([m.value for m in logged], history[key], rtol=1e-12)
    assert (history["conv1_tanh.p15"] <= history["conv1_tanh.p50"]).all()
    assert (history["conv1_tanh.p50"] <= history["conv1_tanh.p85"]).all()

    coad = sorted(study.client.get_metric_history(run_id, M.COADAPTATION_FC1), key=lambda m: m.step)
    assert [m.step for m in coad] == history["step"].tolist()
    acts = np.load(diag / "fc1_activations.npy")
    assert acts.shape == (64, 84) and acts.dtype == np.float32  # probe_size images x 84 units
    m = run.data.metrics
    assert m[M.COADAPTATION_FC1] == coad[-1].value
    assert m[M.COADAPTATION_FC1] == pytest.approx(mean_abs_correlation(acts), rel=1e-5)
    summary = json.loads((diag / "summary.json").read_text())
    assert summary["coadaptation_fc1"] == m[M.COADAPTATION_FC1] and summary["probe_size"] == 64
    assert sorted(summary["variance_shift"]) == ["conv1_bn", "conv2_bn", "conv3_bn", "fc1_bn"]
    for layer, value in summary["variance_shift"].items():
        assert m[M.variance_shift(layer)] == value and value >= 1.0
    assert m[M.DIAGNOSTICS_FINAL_SECONDS] > 0
    assert (diag / "covariate_shift.png").read_bytes()[:8] == PNG


@slow
def test_coadaptation_claims_carry_a_paired_interval(report):
    lines = [line for line in report.md.splitlines() if line.startswith("- dropout (")]
    assert len(lines) == 1, lines
    match = re.fullmatch(r"- dropout \((\d\.\d{3})\) vs plain \((\d\.\d{3})\): ([+-]\d\.\d{3}), 95% bootstrap "
                         r"interval over probe images ([+-]\d\.\d{3}) to ([+-]\d\.\d{3}): (.*)\.", lines[0])
    assert match, lines[0]
    a, b, diff, low, high = (float(g) for g in match.groups()[:5])
    assert diff == pytest.approx(a - b, abs=2e-3) and low <= diff <= high
    expected = ("lower with dropout" if high < 0 else "higher with dropout" if low > 0
                else "not distinguishable on this probe")
    assert match.group(6) == expected


@slow
def test_figures_are_non_empty_pngs(report):
    figures = report.dir / "figures"
    assert {p.name for p in figures.iterdir()} == FIGURES
    for name in FIGURES:
        data = (figures / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
    assert not [p for p in report.dir.iterdir() if p.name.startswith(".compare-")]  # staging cleaned up


# --- the significance table ------------------------------------------------------------------


@slow
def test_significance_csv_is_the_logged_table(report):
    logged, csv = report.significance, report.significance_csv
    assert list(csv.columns) == list(logged.columns)
    for column in csv.columns:
        if csv[column].dtype.kind in "fi":  # the logged table rounds p-values to 10 decimals
            np.testing.assert_allclose(csv[column], logged[column], rtol=1e-6, atol=1e-9)
        else:
            # load_table reads the one-seed "2.46e-13" back as a number: compare as text
            assert csv[column].astype(str).tolist() == logged[column].astype(str).tolist(), column



@slow
def test_mcnemar_counts_are_the_predictions(study, report):
    significance = report.significance_csv
    assert list(zip(significance["a"], significance["b"])) == EXPECTED_PAIRS
    for r in significance.itertuples():
        a = _correct(study, study.records[r.a]["run_id"])
        b = _correct(study, study.records[r.b]["run_id"])
        only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
        assert (r.only_a_right, r.only_b_right) == (only_a, only_b)
        p = sps.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert r.mcnemar_p_per_seed == f"{p:.3g}"
        # one seed: the images are the only source, a paired t over the per-image differences
        assert r.p == pytest.approx(max(1e-12, sps.ttest_rel(a.astype(float), b.astype(float)).pvalue), rel=1e-6)
        assert math.isnan(r.p_seed_t)
        assert r.diff_pp == pytest.approx(100 * (a.mean() - b.mean()), abs=1e-4)
        shown = [cell.strip() for cell in _md_line(report.md, f"| {r.a} vs {r.b} ").strip("|").split("|")]
        assert f"{r.diff_pp:+.2f}" in shown and f"{r.p_holm:.2g}" in shown, shown
    for family, rows in significance.groupby("family"):
        assert rows["p_holm"].tolist() == pytest.approx(holm_by_definition(rows["p"].tolist()), rel=1e-9), family
    assert set(significance["family"]) == {"confirmatory", "exploratory"}
    for r in significance.itertuples():
        direction = r.call.endswith(" better")
        assert direction == (r.p_holm < 0.05) == (r.low_pp > 0 or r.high_pp < 0), r
    assert any(c.endswith(" better") for c in significance["call"])  # 200 images do separate some variants


# --- which runs ------------------------------------------------------------------------------


@slow
def test_a_newer_run_of_the_same_stage_does_not_replace_the_recorded_one(study, report):
    recorded = study.client.get_run(study.records["plain"]["run_id"])
    stale = study.client.get_run(study.stale_run_id)
    assert stale.info.run_name == "plain-s0" and stale.info.status == "FINISHED"
    assert stale.info.start_time > recorded.info.start_time
    assert stale.data.metrics[M.TEST_LOSS] != recorded.data.metrics[M.TEST_LOSS]
    row = _row(report.table, "plain")
    assert row["run_ids"] == recorded.info.run_id
    assert row["test_loss_mean"] == recorded.data.metrics[M.TEST_LOSS]
    assert study.stale_run_id not in report.md
    assert study.stale_run_id not in report.summary.data.tags["pipeline.runs"]


@slow
@pytest.mark.parametrize("status", ["FAILED", "KILLED", "RUNNING"])
def test_a_record_naming_an_unfinished_run_is_refused(study, tmp_path, status):
    run = study.client.create_run(study.experiment_id, run_name="bn_hidden-s0", tags={"variant": "bn_hidden"})
    run_id = run.info.run_id
    for key in ("test_accuracy", "test_loss", "train_seconds"):  # it looks complete, but is not FINISHED
        study.client.log_metric(run_id, {**M.EPOCH, **M.TIMING}[key], study.records["bn_hidden"][key])
    if status != "RUNNING":  # RUNNING: the orphan `mlflow run` without conda leaves
        study.client.set_terminated(run_id, status)
    assert study.client.get_run(run_id).info.status == status
    results = study.results_copy(tmp_path / "results")
    record_path = results / "bn_hidden-s0" / "record.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "run_id": run_id}))
    before = study.comparison_runs()
    with pytest.raises(UserError) as exc:
        compare(study.params_path, results, tmp_path / "reports")
    message = str(exc.value)
    assert f"run {run_id} (bn_hidden-s0) is {status}, not FINISHED" in message
    assert "`dvc repro -f train@bn_hidden-0`" in message
    assert not (tmp_path / "reports").exists()
    assert study.comparison_runs() == before


@slow
def test_a_missing_record_names_the_stage_to_run(study, tmp_path):
    results = study.results_copy(tmp_path / "results")
    (results / "dropout-s0" / "record.json").unlink()
    with pytest.raises(UserError) as exc:
        compare(study.params_path, results, tmp_path / "reports")
    assert "results/dropout-s0/record.json" in str(exc.value)
    assert "`dvc repro train@dropout-0`" in str(exc.value)
    assert not (tmp_path / "reports").exists()


@slow
def test_a_record_disagreeing_with_its_run_is_refused(study, tmp_path):
    results = study.results_copy(tmp_path / "results")
    record_path = results / "bn_hidden-s0" / "record.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "test_accuracy": record["test_accuracy"] + 0.005}))
    with pytest.raises(UserError) as exc:
        compare(study.params_path, results, tmp_path / "reports")
    message = str(exc.value)
    assert "bn_hidden-s0: record says test_accuracy" in message
    assert study.records["bn_hidden"]["run_id"] in message
    assert "`dvc repro -f train@bn_hidden-0`" in message


@slow
def test_a_record_naming_a_run_not_in_the_store_is_refused(study, tmp_path):
    results = study.results_copy(tmp_path / "results")
    record_path = results / "dropout-s0" / "record.json"
    record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "run_id": "0" * 32}))
    with pytest.raises(UserError, match=r"run 0{32} \(dropout-s0\) is not in the MLflow store.*train@dropout-0"):
        compare(study.params_path, results, tmp_path / "reports")


def _fake_records(results: Path, variants: list[str]) -> None:
    for i, v in enumerate(variants):
        (results / f"{v}-s0").mkdir(parents=True)
        (results / f"{v}-s0" / "record.json").write_text(json.dumps(
            {"run_id": f"{i:032x}", "experiment_id": "1", "variant": v, "seed": 0, "test_accuracy": 0.5}))


def test_no_records_at_all_names_the_first_stage(tmp_path):
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(study_params(VARIANTS, [0], PAIRS), sort_keys=False))
    with pytest.raises(UserError, match=r"no training record results/plain-s0/record\.json; "
                                        r"run `dvc repro train@plain-0` \(or `dvc repro` for the whole study\)"):
        compare(params_path, tmp_path / "results", tmp_path / "reports")
    assert not (tmp_path / "reports").exists()


def test_a_missing_store_says_to_run_the_pipeline(tmp_path, monkeypatch):
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(study_params(VARIANTS, [0], PAIRS), sort_keys=False))
    _fake_records(tmp_path / "results", VARIANTS)
    db = tmp_path / "nowhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(UserError) as exc:
        compare(params_path, tmp_path / "results", tmp_path / "reports")
    assert f"no MLflow store at {db}" in str(exc.value)
    assert "run `dvc repro`" in str(exc.value)
    assert not db.exists()  # looking did not create an empty store
    assert not (tmp_path / "reports").exists()


# --- the summary run -------------------------------------------------------------------------


@slow
def test_summary_run_holds_the_table(study, report):
    run = report.summary
    assert run.info.run_name == "comparison" and run.info.status == "FINISHED"
    assert run.info.experiment_id == study.experiment_id
    assert study.client.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert run.data.tags["pipeline.kind"] == "comparison"
    assert sorted(run.data.tags["pipeline.runs"].split()) == sorted(r["run_id"] for r in study.records.values())
    top = {a.path for a in study.client.list_artifacts(run.info.run_id)}
    assert {"comparison_table.json", "significance_table.json", "comparison.md", "comparison.csv", "significance.csv",
            "figures"} <= top
    logged_figures = {Path(a.path).name for a in study.client.list_artifacts(run.info.run_id, "figures")}
    assert logged_figures == FIGURES
    logged = study.client.load_table(study.experiment_id, "comparison_table.json", run_ids=[run.info.run_id])
    assert logged["variant"].tolist() == report.table["variant"].tolist()
    assert logged["run_ids"].tolist() == report.table["run_ids"].tolist()
    np.testing.assert_allclose(logged["test_accuracy_mean"], report.table["test_accuracy_mean"], rtol=1e-9)
    for r in report.table.itertuples():
        assert run.data.metrics[f"{r.variant}.test_accuracy_mean"] == pytest.approx(r.test_accuracy_mean)


def _description_links(description: str) -> tuple[list[str], list[tuple[str, str]]]:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", description)
    runs = re.findall(r"\[(\w{32})\]\(#/experiments/(\w+)/runs/(\w{32})\)", description)
    assert all(text == target for text, _, target in runs), runs
    return images, [(experiment, run_id) for _, experiment, run_id in runs]


def _shown_figures(description: str) -> tuple[bool, set[str]]:
    """Whether the description had to leave the diagnostics out (MLflow's limit), and the figures it shows."""
    trimmed = "## Diagnostics: measurements, not causes" not in description
    return trimmed, FIGURES - DIAGNOSTICS_FIGURES if trimmed else FIGURES


@slow
def test_summary_run_description_is_the_report_linked_for_the_ui(study, report):
    """The description is comparison.md with figures served by the run's artifacts and run ids
    linked to their run pages; nothing else differs."""
    run = report.summary
    description = run.data.tags["mlflow.note.content"]
    assert len(description) <= DESCRIPTION_LIMIT
    images, runs = _description_links(description)
    trimmed, shown = _shown_figures(description)
    assert len(images) == len(shown)
    for url in images:
        assert url.startswith("get-artifact?"), url
        query = parse_qs(urlparse(url).query)
        assert query["run_uuid"] == [run.info.run_id] and query["path"][0].startswith("figures/")
    assert sorted(query_path for url in images for query_path in parse_qs(urlparse(url).query)["path"]) == \
        sorted(f"figures/{name}" for name in shown)
    assert sorted(run_id for _, run_id in runs) == sorted(r["run_id"] for r in study.records.values())
    assert {experiment for experiment, _ in runs} == {study.experiment_id}
    as_file = re.sub(r"\]\(get-artifact\?path=figures%2F([\w.]+)&run_uuid=\w+\)", r"](figures/\1)", description)
    as_file = re.sub(r"\[(\w{32})\]\(#/experiments/\w+/runs/\1\)", r"\1", as_file)
    if not trimmed:
        assert as_file == report.md
    else:  # too long for a description (UI links are longer than file names): the report without the
        # diagnostics (and, if still too long, without the significance tables), each replaced by a pointer
        head, _, _ = report.md.partition("## Diagnostics: measurements, not causes")
        assert len(report.md) > 0.75 * DESCRIPTION_LIMIT
        added = [line for line in as_file.splitlines() if line and line not in report.md.splitlines()]
        assert added and all("`comparison.md` among this run's artifacts" in line or line == "## Diagnostics"
                             for line in added), added
        kept = [line for line in head.splitlines() if line and line not in as_file.splitlines()]
        assert all(line.startswith("|") or line.startswith("**Confirmatory") or line.startswith("**Exploratory")
                   for line in kept), kept  # only the tables may go
        assert "## Figures" in as_file


@slow
def test_description_figures_load_from_a_real_mlflow_server(study, tmp_path, monkeypatch):
    """`mlflow server` on the study's store: compare through it, then fetch every image of the
    comparison run's description relative to the UI page, as a browser showing it would."""
    import requests
    from reliability_helpers import mlflow_server

    with mlflow_server(tmp_path / "server", study.uri) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        before = study.comparison_runs()
        compare(study.params_path, study.results, tmp_path / "reports")
        mlflow.set_tracking_uri(study.uri)
        (summary_id,) = study.comparison_runs() - before
        description = study.client.get_run(summary_id).data.tags["mlflow.note.content"]
        assert f"(store `{url}`)" in description
        images, runs = _description_links(description)
        ui_page = url + "/"
        assert requests.get(ui_page, timeout=30).status_code == 200
        assert len(images) == len(_shown_figures(description)[1])
        for image in images:
            resp = requests.get(urljoin(ui_page, image), timeout=30)
            assert resp.status_code == 200, (image, resp.status_code, resp.text[:200])
            assert resp.content[:8] == PNG and len(resp.content) > 5000, image
        for experiment, run_id in runs:  # what the UI's run page asks the server for
            resp = requests.get(f"{url}/ajax-api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30)
            assert resp.status_code == 200 and resp.json()["run"]["info"]["experiment_id"] == experiment


@slow
def test_summary_run_goes_to_the_store_the_runs_came_from(study, tmp_path, monkeypatch):
    """Under `dvc exp run --temp`: no MLFLOW_TRACKING_URI, DVC_ROOT names the real repository,
    and the stage runs in a temporary copy, where MLflow's default store would be a new one."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_ROOT", str(study.root))
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(None)  # MLflow's own default: sqlite:///<cwd>/mlflow.db
    before = study.comparison_runs()
    compare(study.params_path, study.results, tmp_path / "reports")
    assert len(study.comparison_runs() - before) == 1
    assert not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "reports" / "comparison.md").exists()


# --- several seeds ---------------------------------------------------------------------------

SEED_VARIANTS = ["plain", "bn_hidden"]
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def seeds_report(study) -> tuple[Report, dict]:
    params_path = study.root / "params-3-seeds.yaml"
    params_path.write_text(yaml.safe_dump(study_params(SEED_VARIANTS, SEEDS, []), sort_keys=False))
    results = study.root / "results-3-seeds"
    records = {}
    for v in SEED_VARIANTS:
        shutil.copytree(study.results / f"{v}-s0", results / f"{v}-s0")  # same train settings: reuse seed 0
        records[(v, 0)] = study.records[v]
        for s in SEEDS[1:]:
            records[(v, s)] = study.train(v, s, record_dir=results / f"{v}-s{s}", dvc_stage=f"train@{v}-{s}",
                                          params_path=params_path)
    return _report(study, params_path, results, study.root / "reports-3-seeds"), records


@slow
def test_three_seeds_table_has_mean_and_std(study, seeds_report):
    report, records = seeds_report
    assert sorted(report.table["variant"]) == sorted(SEED_VARIANTS)
    for v in SEED_VARIANTS:
        runs = [study.client.get_run(records[(v, s)]["run_id"]) for s in SEEDS]
        acc = [r.data.metrics[M.TEST_ACCURACY] for r in runs]
        loss = [r.data.metrics[M.TEST_LOSS] for r in runs]
        assert [r.info.run_name for r in runs] == [f"{v}-s{s}" for s in SEEDS]
        row = _row(report.table, v)
        assert row["n_seeds"] == 3
        assert row["run_ids"] == " ".join(r.info.run_id for r in runs)
        assert row["test_accuracy_mean"] == pytest.approx(np.mean(acc), rel=1e-12)
        assert row["test_accuracy_std"] == pytest.approx(np.std(acc, ddof=1), rel=1e-9)
        assert row["test_loss_mean"] == pytest.approx(np.mean(loss), rel=1e-12)
        assert row["test_loss_std"] == pytest.approx(np.std(loss, ddof=1), rel=1e-9)
        assert row["test_loss_std"] > 0  # the seeds really differ
        assert row["train_seconds_mean"] == pytest.approx(np.mean([r.data.metrics[M.TRAIN_SECONDS] for r in runs]))
        matrix = np.vstack([_correct(study, records[(v, s)]["run_id"]) for s in SEEDS])
        expected = evidence.contrast({v: matrix}, {v: 1.0}, margin=0.0, alpha=0.05).interval
        assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == pytest.approx((expected.low, expected.high))
        # both sources: never less spread than the seeds alone show (the interval's t quantile may be smaller,
        # on the images' many degrees of freedom)
        assert evidence.contrast({v: matrix}, {v: 1.0}, margin=0.0, alpha=0.05).se >= 0.999 * sps.sem(acc)
        assert row["ci_method"] == f"3 seeds and {TEST_LIMIT} test images"
        csv = report.csv.set_index("variant").loc[v]
        assert (csv["n_seeds"], csv["run_ids"]) == (3, row["run_ids"])
        np.testing.assert_allclose(csv[["test_loss_mean", "test_loss_std", "test_accuracy_mean", "test_accuracy_std"]]
                                   .to_numpy(dtype=float), [np.mean(loss), np.std(loss, ddof=1), np.mean(acc),
                                                            np.std(acc, ddof=1)], rtol=1e-9)
        line = _md_line(_results_section(report.md), f"| {v} ")
        assert f"{row['test_loss_mean']:.4f} ± {row['test_loss_std']:.4f}" in line
        assert f"{row['test_accuracy_mean']:.4f} ± {row['test_accuracy_std']:.4f}" in line
        assert report.metrics[v]["n_seeds"] == 3
    assert "Seeds: 0, 1, 2." in report.md


@slow
def test_three_seeds_verdict_uses_seeds_and_images(study, seeds_report):
    report, records = seeds_report
    significance = report.significance_csv
    assert list(zip(significance["a"], significance["b"])) == [("bn_hidden", "plain")]
    r = significance.iloc[0]
    acc_bn = [records[("bn_hidden", s)]["test_accuracy"] for s in SEEDS]
    acc_plain = [records[("plain", s)]["test_accuracy"] for s in SEEDS]
    assert r["p_seed_t"] == pytest.approx(sps.ttest_rel(acc_bn, acc_plain).pvalue, rel=1e-6)
    assert r["p_sign_flip"] >= 0.25  # three seeds: the exact test cannot go lower
    matrices = {v: np.vstack([_correct(study, records[(v, s)]["run_id"]) for s in SEEDS]) for v in ("bn_hidden", "plain")}
    expected = evidence.contrast(matrices, {"bn_hidden": 1.0, "plain": -1.0}, margin=0.001, alpha=0.05)
    assert r["p"] == pytest.approx(expected.p, rel=1e-9) and r["p_holm"] == pytest.approx(r["p"])  # one comparison
    assert r["diff_pp"] == pytest.approx(100 * (np.mean(acc_bn) - np.mean(acc_plain)), abs=1e-4)
    p_mcnemar = [stats.mcnemar(matrices["bn_hidden"][i], matrices["plain"][i]).p_value for i in range(len(SEEDS))]
    assert r["mcnemar_p_per_seed"] == " ".join(f"{p:.3g}" for p in p_mcnemar)
    shown = [cell.strip() for cell in _md_line(report.md, "| bn_hidden vs plain ").strip("|").split("|")]
    assert f"{r['p_seed_t']:.2g}" in shown and f"{r['p']:.2g}" in shown, shown
    assert "paired t-test across seeds alone" in report.md


# --- the notebook's conclusions and convergence speed ----------------------------------------


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    end = md.find("\n## ", start + len(heading))
    return md[start:] if end < 0 else md[start:end]


def test_the_report_opens_with_the_conclusions_judged(study, report):
    md = report.md
    assert md.index("## The notebook's conclusions, judged") < md.index("## Results")
    section = _section(md, "## The notebook's conclusions, judged")
    sig = report.significance_csv.set_index(["a", "b"])
    first = sig.loc[("bn_hidden", "dropout")]
    call = {"positive": "holds", "negative": "reversed"}.get(first.verdict, first.verdict)
    assert f'1. "Batch norm beats dropout." — **{call}**' in section
    assert (f"bn_hidden − dropout: {first.diff_pp:+.2f} pp ({100 * first.confidence:.1f}% interval "
            f"{first.low_pp:+.2f} to {first.high_pp:+.2f} pp, seeds and test images), Holm p = {first.p_holm:.2g}") in section
    assert '3. "Batch norm on the input helps." — **not tested**' in section
    assert "needs bn_all, not trained in this study" in section
    assert report.metrics["conclusion_1"]["verdict"] == {"holds": 1, "equivalent": 0, "inconclusive": 0, "reversed": -1}[call]
    assert report.metrics["conclusion_1"]["min_diff_pp"] == pytest.approx(first.diff_pp, abs=1e-4)
    assert report.summary.data.tags["conclusion_1"] == f"Batch norm beats dropout. {call}"
    assert report.summary.data.metrics["conclusion_1.verdict"] == report.metrics["conclusion_1"]["verdict"]


def test_the_report_shows_steps_to_each_target_from_the_logged_curves(study, report):
    """Every run logged its held-out accuracy at every step; the table is the first step at or past
    20% (reached by every run here, 3 steps of 128 images) and 99.9% (reached by none)."""
    from pipeline.compare.convergence import steps_to_target

    section = _section(report.md, "## Convergence speed")
    assert "![convergence.png](figures/convergence.png)" in section
    for variant in VARIANTS:
        run_id = study.records[variant]["run_id"]
        points = sorted(study.client.get_metric_history(run_id, M.CONVERGENCE_ACCURACY), key=lambda m: m.step)
        assert [m.step for m in points] == [0, 1, 2, 3]
        curve = pd.DataFrame({"step": [m.step for m in points], "test_accuracy": [m.value for m in points]})
        expected = steps_to_target(curve, 0.2)
        line = _md_line(section, f"| {variant} ")
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells == [variant, "1", "not reached" if math.isnan(expected) else f"{expected:.0f}", "not reached"]
        logged = report.metrics["convergence"][variant]
        assert logged["reached_99.9pct"] == 0 and logged["steps_to_99.9pct"] is None
    share = re.search(r"Measuring it took ([\d.]+)% of the training time \(mean over 3 runs", section)
    assert share and 0 < float(share.group(1)) < 100


KERAS_BLOCKED = """
import sys
class NoKeras:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('keras', 'tensorflow', 'jax'):
            raise ImportError(f'{name} cannot be imported in this process')
sys.meta_path.insert(0, NoKeras())
sys.argv = ['compare']
from pipeline.compare.stage import compare
from pathlib import Path
compare(Path(sys.argv_params), Path(sys.argv_results), Path(sys.argv_reports))
"""


@slow
def test_the_compare_stage_runs_where_keras_cannot_be_imported(study, report, tmp_path):
    """The report needs no Keras: a process that refuses every Keras/TensorFlow/JAX import writes the
    same report as the one this module's fixture wrote."""
    code = KERAS_BLOCKED.replace("sys.argv_params", repr(str(study.params_path))).replace(
        "sys.argv_results", repr(str(study.results))).replace("sys.argv_reports", repr(str(tmp_path / "reports")))
    env = {**os.environ, "MLFLOW_TRACKING_URI": study.uri, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=study.root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "reports" / "comparison.csv").read_text() == (report.dir / "comparison.csv").read_text()


@slow
def test_dvc_plots_show_overlays_every_variant_and_seed(study, report, tmp_path):
    """The project's top-level plots (dvc.yaml, template .dvc/plots/overlay.json) render one chart per question
    from the tables compare wrote: every run's points, a colour per variant."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]}))
    shutil.copytree(report.dir / "plots", repo / "reports" / "plots")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=repo, check=True)
    (repo / ".dvc" / "plots").mkdir()
    shutil.copy(ROOT / ".dvc" / "plots" / "overlay.json", repo / ".dvc" / "plots" / "overlay.json")
    for name, x in (("test_accuracy_per_epoch.csv", "epoch"), ("heldout_accuracy_per_step.csv", "step")):
        proc = subprocess.run([str(Path(sys.executable).with_name("dvc")), "plots", "show", "--show-vega",
                               f"reports/plots/{name}"], cwd=repo, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        spec = json.loads(proc.stdout)
        assert spec["encoding"]["x"]["field"] == x and spec["encoding"]["color"]["field"] == "variant"
        runs = {row["run"] for row in spec["data"]["values"]}
        assert runs == {f"{v}-s0" for v in VARIANTS}, runs
