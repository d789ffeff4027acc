"""The learning-rate grid: the best rate chosen on validation images only (ties the same way every
time), the seeded validation split, diverged trainings recorded and shown, and the whole grid
run by the Ray sweep into a real DVC project and MLflow store, then reported by ``dvc repro``."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import VENV_BIN, make_project_copy, subprocess_env, tiny_params

from pipeline import lr_report
from pipeline import metric_names as M
from pipeline.errors import UserError
from pipeline.inputs import carve_validation
from pipeline.params import Params
from pipeline.runs import GridRun


def _run(variant, seed, rate, val_acc, test_acc, val_loss=0.1, diverged=False) -> GridRun:
    return GridRun(variant, seed, rate, f"{variant}-{seed}-{rate}", val_acc, val_loss, test_acc, 0.2, diverged)


def _grid(test_of: dict) -> list[GridRun]:
    """Two variants, three seeds, three rates: validation favours 0.03 for ``a`` and 0.1 for ``b``;
    the test accuracy is whatever ``test_of[(variant, rate)]`` says."""
    val = {("a", 0.01): 0.95, ("a", 0.03): 0.97, ("a", 0.1): 0.96, ("b", 0.01): 0.90, ("b", 0.03): 0.93,
           ("b", 0.1): 0.94}
    return [_run(v, s, r, val[(v, r)] + 0.001 * s, test_of[(v, r)]) for (v, r) in val for s in (0, 1, 2)]


def test_best_rate_is_chosen_on_validation_even_when_the_test_set_disagrees():
    # The test accuracy is highest exactly where validation is lowest: a choice that read it would differ.
    test_of = {("a", 0.01): 0.99, ("a", 0.03): 0.90, ("a", 0.1): 0.91, ("b", 0.01): 0.99, ("b", 0.03): 0.92,
               ("b", 0.1): 0.80}
    table = lr_report.summary(_grid(test_of), ["a", "b"])
    assert lr_report.best_rates(table) == {"a": 0.03, "b": 0.1}
    # ... and the same without any test column at all.
    assert lr_report.best_rates(table.drop(columns=["test_accuracy_mean", "test_accuracy_std"])) == {"a": 0.03,
                                                                                                    "b": 0.1}
    row = table[(table["variant"] == "a") & (table["rate"] == 0.03)].iloc[0]
    assert row["validation_accuracy_mean"] == pytest.approx(0.971)
    assert (row["validation_accuracy_min"], row["validation_accuracy_max"]) == pytest.approx((0.97, 0.972))
    assert row["test_accuracy_mean"] == pytest.approx(0.90)
    assert lr_report.metrics(table, {"a": 0.03, "b": 0.1})["lr_grid"]["a"] == {
        "best_learning_rate": 0.03, "validation_accuracy_at_best": 0.971, "test_accuracy_at_best": 0.9,
        "diverged_runs": 0}


def test_ties_break_on_validation_loss_then_the_smaller_rate_in_any_order():
    runs = [_run("a", 0, 0.1, 0.95, 0.9, val_loss=0.2), _run("a", 0, 0.03, 0.95, 0.9, val_loss=0.2),
            _run("a", 0, 0.01, 0.95, 0.9, val_loss=0.3), _run("b", 0, 0.3, 0.95, 0.9, val_loss=0.1),
            _run("b", 0, 0.01, 0.95, 0.9, val_loss=0.2)]
    expected = {"a": 0.03, "b": 0.3}
    for order in (runs, runs[::-1], runs[2:] + runs[:2]):
        assert lr_report.best_rates(lr_report.summary(order, ["a", "b"])) == expected


def test_a_rate_where_any_seed_diverged_is_never_best_and_is_shown():
    runs = [_run("a", s, 0.3, 0.99, 0.99, diverged=(s == 1)) for s in (0, 1)]
    runs += [_run("a", s, 0.1, 0.90, 0.90) for s in (0, 1)]
    runs += [_run("b", s, 0.3, 0.1, 0.1, diverged=True) for s in (0, 1)]
    table = lr_report.summary(runs, ["a", "b"])
    assert lr_report.best_rates(table) == {"a": 0.1, "b": None}
    cells = {(r.variant, r.rate): lr_report.cell(r._asdict()) for r in table.itertuples()}
    assert cells[("a", 0.3)] == "0.9900 (0.9900–0.9900); 1 of 2 seeds diverged"
    assert cells[("b", 0.3)] == "diverged (2 of 2 seeds)"
    assert lr_report.metrics(table, {"a": 0.1, "b": None})["lr_grid"]["b"] == {
        "best_learning_rate": None, "validation_accuracy_at_best": None, "test_accuracy_at_best": None,
        "diverged_runs": 2}


def test_validation_split_is_fixed_by_the_seed_and_disjoint_from_training():
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    data = {"x_train": x, "y_train": np.arange(100), "x_test": x[:5], "y_test": np.arange(5)}
    a, again, other = (carve_validation(data, 20, seed) for seed in (0, 0, 1))
    assert len(a["y_val"]) == 20 and len(a["y_train"]) == 80
    assert sorted([*a["y_val"], *a["y_train"]]) == list(range(100))
    assert list(a["y_val"]) == sorted(a["y_val"]) and list(a["y_train"]) == sorted(a["y_train"])  # prepared order
    np.testing.assert_array_equal(a["y_val"], again["y_val"])
    assert set(a["y_val"]) != set(other["y_val"])
    np.testing.assert_array_equal(a["x_val"][:, 0], a["y_val"])  # images travel with their labels
    assert a["x_test"] is data["x_test"]
    with pytest.raises(UserError, match=r"'lr_grid.validation_images' = 100 is invalid: must be from 1 to 99"):
        carve_validation(data, 100, 0)


@pytest.mark.parametrize("rates, message", [
    ([0.1, 0.1], "must not repeat a learning rate"),
    ([0.1, -1], "must hold numbers > 0"),
    (["1e-3"], "write 1e-3 as 0.001"),
    (0.1, "must be a list of learning rates"),
])
def test_bad_learning_rates_are_refused_in_one_line(rates, message):
    raw = tiny_params()
    raw["lr_grid"] = {"learning_rates": rates}
    with pytest.raises(UserError, match=r"^params: 'lr_grid.learning_rates' = .* is invalid: ") as err:
        Params.from_dict(raw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_one_name_pair_is_refused_in_one_line():
    raw = tiny_params()
    raw["compare"]["conclusions"][0]["holds_if"] = [["bn_hidden"]]
    with pytest.raises(UserError, match=r"holds_if.0' = \['bn_hidden'\] is invalid: must be a pair of two variant"):
        Params.from_dict(raw)


@pytest.mark.slow
def test_grid_through_the_ray_sweep_then_dvc_repro_reports_it(tmp_path):
    """plain and bn_hidden at rates 0.05 and 1000 (which diverges) with one seed: the sweep trains the
    study and the grid, commits every stage; ``dvc repro`` then only compares, and the report,
    metrics and summary run show the grid with the diverged trainings."""
    params = tiny_params(train_limit=300, test_limit=200)
    params["variants"] = {v: params["variants"][v] for v in ("plain", "bn_hidden")}
    params["diagnostics"]["enabled"] = False
    params["convergence"].update({"every_steps": 1, "images": 200})
    params["lr_grid"] = {"learning_rates": [0.05, 1000], "validation_images": 100}
    project = make_project_copy(tmp_path / "project", params)
    env = subprocess_env(tmp_path)

    sweep = subprocess.run([sys.executable, "-m", "pipeline.sweep", "--local-cpus", "2"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=900, check=False)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert "6 of 6 trainings done" in sweep.stdout, sweep.stdout
    assert sweep.stdout.count("(DIVERGED)") == 2, sweep.stdout  # both variants at 1000
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {s for s in lock if s.startswith(("train@", "lr_grid@"))} == {
        "train@plain-0", "train@bn_hidden-0", "lr_grid@plain-0-0.05", "lr_grid@plain-0-1000",
        "lr_grid@bn_hidden-0-0.05", "lr_grid@bn_hidden-0-1000"}

    repro = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "Running stage 'compare'" in repro.stdout
    assert "Running stage 'train@" not in repro.stdout and "Running stage 'lr_grid@" not in repro.stdout

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("test-study")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    record = json.loads((project / "results" / "lr_grid" / "plain-s0-lr1000" / "record.json").read_text())
    diverged = runs["plain-s0-lr1000"]
    assert record["run_id"] == diverged.info.run_id and record["learning_rate"] == 1000
    assert record["diverged_at_step"] == diverged.data.metrics[M.DIVERGED_AT_STEP] >= 1
    assert diverged.data.tags[M.TAG_DIVERGED] == "true" and diverged.data.tags[M.TAG_LR_GRID] == "true"
    assert diverged.data.params["train.learning_rate"] == "1000.0"
    assert diverged.data.params["data.n_train"] == "200" and diverged.data.params["data.n_validation"] == "100"
    fine = runs["bn_hidden-s0-lr0.05"]
    assert fine.data.tags[M.TAG_DIVERGED] == "false" and fine.info.status == "FINISHED"
    assert fine.data.metrics[M.VALIDATION_ACCURACY] == pytest.approx(
        pd.read_csv(project / "results" / "lr_grid" / "bn_hidden-s0-lr0.05" / "history.csv")
        ["validation_accuracy"].iloc[-1])
    assert runs["plain-s0"].data.tags[M.TAG_DIVERGED] == "false" and M.TAG_LR_GRID not in runs["plain-s0"].data.tags
    # Only the study's models are registered: a grid's would take their aliases.
    assert len(client.search_model_versions("name = 'test-study'")) == 2
    assert sorted(client.get_registered_model("test-study").aliases) == ["bn_hidden-s0", "plain-s0"]

    md = (project / "reports" / "comparison.md").read_text()
    section = md[md.index("## Learning-rate sensitivity"):md.index("## Figures")]
    assert "Diverged (training loss NaN or infinite, or an epoch's mean above 4.6" in section
    assert "plain-s0-lr1000" in section and "bn_hidden-s0-lr1000" in section
    assert "| 1000 | diverged (1 of 1 seed) | diverged (1 of 1 seed) |" in section
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["lr_grid"]["plain"]["best_learning_rate"] == 0.05
    assert metrics["lr_grid"]["plain"]["diverged_runs"] == 1
    assert metrics["lr_grid"]["bn_hidden"]["test_accuracy_at_best"] == pytest.approx(
        runs["bn_hidden-s0-lr0.05"].data.metrics[M.TEST_ACCURACY], abs=1e-6)
    assert (project / "reports" / "figures" / "learning_rates.png").stat().st_size > 1000
    summary = client.search_runs([experiment.experiment_id], "tags.`pipeline.kind` = 'comparison'")[0]
    assert summary.data.metrics["lr_grid.plain.best_learning_rate"] == 0.05
    assert summary.data.tags["lr_grid.ranking_holds"] in ("true", "false")


@pytest.mark.parametrize("batch_losses, epoch_loss, expected", [
    ([1.0, float("nan"), 2.0], 2.0, 12),        # NaN at the 2nd step of the 2nd epoch (10 steps per epoch)
    ([1.0, float("inf")], float("inf"), 12),    # infinity: the step, not the epoch's end
    ([30.0, 2.0], 4.7, 20),                     # a mean above 2 ln 10 over the epoch: its last step
    ([30.0, 2.0], 4.5, None),                   # a spike the epoch recovered from: not diverged
])
def test_divergence_guard_stops_at_the_step_the_loss_diverged(batch_losses, epoch_loss, expected):
    import keras

    from pipeline.callbacks import DIVERGED_LOSS, DivergenceGuard

    assert DIVERGED_LOSS == pytest.approx(2 * np.log(10))
    guard = DivergenceGuard()
    guard.set_model(keras.Sequential())
    guard.set_params({"steps": 10, "epochs": 3})
    guard.on_epoch_begin(1)
    for batch, loss in enumerate(batch_losses):
        guard.on_train_batch_end(batch, {"loss": loss})
    guard.on_epoch_end(1, {"loss": epoch_loss})
    assert guard.diverged_at_step == expected
    assert getattr(guard.model, "stop_training", False) is (expected is not None)
