"""The learning-rate grid: the best rate chosen on validation images only (ties the same way every
time), the seeded validation split, bad grids refused, divergence detected at the right step.
The whole grid run by the Ray sweep and reported by ``dvc repro`` is in ``test_sweep.py``."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import tiny_params

from pipeline.compare import lr_grid as lr_report
from pipeline.core.errors import UserError
from pipeline.train.inputs import carve_validation
from pipeline.core.params import Params
from pipeline.compare.runs import GridRun


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
    cells = {(r.variant, r.rate): lr_report.rate_cell(r._asdict()) for r in table.itertuples()}
    assert cells[("a", 0.3)] == "0.9900 (0.9900–0.9900); 1 of 2 seeds diverged"
    assert cells[("b", 0.3)] == "diverged (2 of 2 seeds)"
    assert lr_report.metrics(table, {"a": 0.1, "b": None})["lr_grid"]["b"] == {
        "best_learning_rate": None, "validation_accuracy_at_best": None, "test_accuracy_at_best": None,
        "diverged_runs": 2}


def test_a_collapsed_training_is_shown_and_its_rate_is_never_best():
    """Near chance without meeting the divergence rule (plain at 0.3 once ended at 0.09): flagged, not averaged in."""
    runs = [_run("a", 0, 0.3, 0.99, 0.99), _run("a", 1, 0.3, 0.09, 0.09)]
    runs += [_run("a", s, 0.1, 0.90, 0.90) for s in (0, 1)]
    table = lr_report.summary(runs, ["a"])
    assert lr_report.best_rates(table) == {"a": 0.1}
    row = table[table["rate"] == 0.3].iloc[0]
    assert (row["n_diverged"], row["n_collapsed"]) == (0, 1)
    assert lr_report.rate_cell(row) == "0.5400 (0.0900–0.9900); 1 of 2 collapsed (near chance)"


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


@pytest.mark.parametrize("batch_losses, epoch_loss, expected", [
    ([1.0, float("nan"), 2.0], 2.0, 12),        # NaN at the 2nd step of the 2nd epoch (10 steps per epoch)
    ([1.0, float("inf")], float("inf"), 12),    # infinity: the step, not the epoch's end
    ([30.0, 2.0], 4.7, 20),                     # a mean above 2 ln 10 over the epoch: its last step
    ([30.0, 2.0], 4.5, None),                   # a spike the epoch recovered from: not diverged
])
def test_divergence_guard_stops_at_the_step_the_loss_diverged(batch_losses, epoch_loss, expected):
    import keras

    from pipeline.train.callbacks import DIVERGED_LOSS, DivergenceGuard

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


@pytest.mark.parametrize("diverged_at_step, expected", [
    (None, 3 * 1000),            # three whole epochs
    (3, 3 * 256),                # stopped inside the first epoch (4 steps make one)
    (4 + 2, 1000 + 2 * 256),     # one whole epoch (4 steps, the last one 232 images), two more steps
    (8, 2 * 1000),               # stopped at the end of the second epoch: its short last batch counts once
])
def test_a_diverged_training_counts_only_the_images_it_trained_on(diverged_at_step, expected):
    from pipeline.train.steps import trained_images

    assert trained_images(1000, 256, 3, diverged_at_step) == expected
