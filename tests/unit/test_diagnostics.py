"""Diagnostics on real Keras models: known arrays in, known numbers out."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from keras import layers

from pipeline.measures import coadaptation as coad
from pipeline.measures import covariate_shift as cs
from pipeline.measures import monitor as keras_measures
from pipeline.measures import probes
from pipeline.measures.variance_shift import shift_from_ratios
from pipeline.core.params import VariantSpec
from pipeline.train.model import build_lenet
from pipeline.core.paths import ROOT

BN_DROPOUT = VariantSpec(name="bn_dropout", bn_input=True, bn_hidden=True, dropout_input=0.2, dropout_hidden=0.5)


def test_percentiles_of_a_known_array():
    assert cs.percentiles(np.arange(101).reshape(1, 101)) == {"p15": 15.0, "p50": 50.0, "p85": 85.0}
    assert cs.percentiles(np.arange(11), qs=(10, 99.5)) == {"p10": 1.0, "p99.5": pytest.approx(9.95)}


def test_probe_stats_sample_percentiles_of_large_points_only():
    rng = np.random.default_rng(8)
    small = rng.normal(size=(16, 7, 7, 8)).astype(np.float32)  # 6,272 values: all used
    large = (3 + 2 * rng.normal(size=(256, 28, 28, 6))).astype(np.float32)  # 1.2 million: sampled
    assert cs.percentile_sample(small.size) is None
    idx = cs.percentile_sample(large.size)
    assert len(idx) == cs.PERCENTILE_SAMPLE == len(np.unique(idx))
    np.testing.assert_array_equal(idx, cs.percentile_sample(large.size))  # the same values every record
    # Spread over every channel, not a stride that would keep some and drop others.
    assert len(np.unique(idx % 6)) == 6

    rec = cs.probe_stats({"small": small, "large": large})
    exact_small = cs.percentiles(small)
    for q in ("p15", "p50", "p85"):
        assert rec[f"small.{q}"] == pytest.approx(exact_small[q], rel=1e-12)
    exact_large = cs.percentiles(large)
    for q in ("p15", "p50", "p85"):  # within a few thousandths of a std of the exact value
        assert rec[f"large.{q}"] == pytest.approx(exact_large[q], abs=0.02)
    # Mean and std always use every value.
    assert rec["large.mean"] == pytest.approx(large.astype(np.float64).mean(), rel=1e-9)
    assert rec["large.log_std"] == pytest.approx(np.log(large.astype(np.float64).std()), rel=1e-9)


def test_mean_abs_correlation():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(20_000, 10))
    assert coad.mean_abs_correlation(independent) < 0.05

    unit = rng.normal(size=(500, 1))
    assert coad.mean_abs_correlation(np.hstack([unit, -3 * unit + 1, 2 * unit])) == pytest.approx(1.0)

    # A constant unit is left out: the two duplicated units alone give 1, not a mean with 0s.
    with_constant = np.hstack([unit, unit, np.full((500, 1), 0.7)])
    assert coad.mean_abs_correlation(with_constant) == pytest.approx(1.0)
    assert math.isnan(coad.mean_abs_correlation(np.hstack([unit, np.zeros((500, 1))])))


def _bn_model(dropout: float) -> keras.Model:
    """Input (6, 6, 3) -> [Dropout] -> BN: a conv-shaped BN with per-channel scales."""
    inputs = keras.Input(shape=(6, 6, 3))
    x = layers.Dropout(dropout, seed=1, name="drop")(inputs) if dropout else inputs
    x = layers.BatchNormalization(momentum=0.5, name="bn")(x)
    return keras.Model(inputs, layers.Activation("tanh", name="bn_tanh")(x))


def _images(rng, n, shape=None):
    if shape is not None:  # images in [0, 1], as the model is fed
        return rng.random((n, *shape), dtype=np.float32)
    # Channels differ in mean and scale, so variance over the wrong axes would not give ~1.
    return (rng.normal(size=(n, 6, 6, 3)) * [0.5, 2.0, 5.0] + [0.0, 3.0, -1.0]).astype("float32")


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_variance_shift_is_one_without_dropout_and_large_with_it(dropout):
    rng = np.random.default_rng(1)
    model = _bn_model(dropout)
    for _ in range(12):  # moving statistics learned in training mode, momentum 0.5
        model(_images(rng, 512), training=True)
    x = _images(rng, 512)  # fresh draws from the same distribution
    shift = shift_from_ratios(keras_measures.variance_ratios(model, x))
    ratios = keras_measures.variance_ratios(model, x)
    assert list(shift) == ["bn"] and ratios["bn"].shape == (3,)
    if dropout:
        # Training variance of x*m/0.5 is 2*E[x^2] - E[x]^2, so r < 1 in every channel.
        assert np.all(ratios["bn"] < 0.6) and shift["bn"] > 1.8
    else:
        assert shift["bn"] == pytest.approx(1.0, abs=0.05)


def test_recalibration_removes_the_variance_shift_and_leaves_the_trained_model_alone():
    from pipeline.measures.recalibrate import recalibrated
    from pipeline.measures.variance_shift import merge_moments

    rng = np.random.default_rng(4)
    model = build_lenet(BN_DROPOUT)
    for _ in range(3):  # moving statistics learned with dropout on
        model(_images(rng, 64, shape=(28, 28, 1)), training=True)
    before = [w.copy() for w in model.get_weights()]
    x = _images(rng, 600, shape=(28, 28, 1))
    copy = recalibrated(model, x, batch_size=250)  # three batches: the merged moments must be exact
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    shift = shift_from_ratios(keras_measures.variance_ratios(copy, x))
    assert set(shift) == {"input_bn", "conv1_bn", "conv2_bn", "conv3_bn", "fc1_bn"}
    assert all(v == pytest.approx(1.0, abs=1e-3) for v in shift.values()), shift
    assert max(shift_from_ratios(keras_measures.variance_ratios(model, x)).values()) > 1.05
    # Each layer's moving mean is its input's mean on x, after the layers before it were re-estimated.
    inputs = probes.probe_activations(copy, x)["fc1_bn"]
    np.testing.assert_allclose(copy.get_layer("fc1_bn").moving_mean.numpy(), inputs.mean(axis=0), rtol=1e-4, atol=1e-6)
    # The same numbers as reading every probe point each batch (how it was first written, three times slower).
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    for layer in [layer for layer in reference.layers if isinstance(layer, keras.layers.BatchNormalization)]:
        state = None
        for start in range(0, len(x), 250):
            state = merge_moments(state, probes.probe_activations(reference, x[start:start + 250])[layer.name])
        layer.moving_mean.assign(state[1].astype(np.float32))
        layer.moving_variance.assign((state[2] / state[0]).astype(np.float32))
    assert all(np.array_equal(a, b) for a, b in zip(reference.get_weights(), copy.get_weights()))
    # Merging batch by batch gives the one-pass moments.
    a = rng.normal(size=(100, 7, 3))
    n, mean, m2 = merge_moments(merge_moments(None, a[:37]), a[37:])
    np.testing.assert_allclose((mean, m2 / n), (a.reshape(-1, 3).mean(0), a.reshape(-1, 3).var(0)), rtol=1e-12)


def test_probe_points_and_probe_model_on_lenet():
    model = build_lenet(BN_DROPOUT)
    expected = ["input_bn", "conv1_bn", "conv1_tanh", "conv2_bn", "conv2_tanh",
                "conv3_bn", "conv3_tanh", "fc1_bn", "fc1_tanh"]
    assert probes.probe_points(model) == expected
    shapes = {"input_bn": (28, 28, 1), "conv1_bn": (28, 28, 6), "conv1_tanh": (28, 28, 6),
              "conv2_bn": (23, 23, 16), "conv2_tanh": (23, 23, 16), "conv3_bn": (7, 7, 120),
              "conv3_tanh": (7, 7, 120), "fc1_bn": (84,), "fc1_tanh": (84,)}

    x = np.random.default_rng(2).random((5, 28, 28, 1), dtype=np.float32)
    acts = probes.probe_activations(model, x)
    assert {k: v.shape for k, v in acts.items()} == {k: (5, *s) for k, s in shapes.items()}
    probe = probes.make_probe_model(model)
    direct = probe(x, training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(direct["fc1_tanh"]), acts["fc1_tanh"], rtol=1e-5)
    # Inference mode: dropout is off, so the input to input_bn is the image itself.
    np.testing.assert_array_equal(acts["input_bn"], x)
    # The watched tensor really is what feeds the layer: tanh of it is fc1_tanh's output.
    fc1_out = keras.Model(model.input, model.get_layer("fc1_tanh").output)(x, training=False)
    np.testing.assert_allclose(np.tanh(acts["fc1_tanh"]), keras.ops.convert_to_numpy(fc1_out), atol=1e-5)

    c = keras_measures.coadaptation(model, x)
    assert 0.0 <= c <= 1.0
    assert shift_from_ratios(keras_measures.variance_ratios(model, x)).keys() == {"input_bn", "conv1_bn", "conv2_bn", "conv3_bn", "fc1_bn"}


def test_covariate_shift_monitor_records_during_fit(tmp_path):
    rng = np.random.default_rng(3)
    model = build_lenet(VariantSpec(name="bn_hidden", bn_hidden=True))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x = rng.random((320, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=320)

    calls, coads = [], []

    def on_record(step, record, coadaptation):
        calls.append((step, record))
        coads.append((step, coadaptation))

    monitor = keras_measures.CovariateShiftMonitor(x[:16], every_n_batches=3, on_record=on_record, coadaptation_layer="fc1_tanh")
    # No per-batch end hook: Keras can then run batch-end callbacks without a device sync per step.
    assert type(monitor).on_train_batch_end is keras.callbacks.Callback.on_train_batch_end
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])

    # 10 batches per epoch, the step count runs on across the epoch boundary.
    assert [s for s, _ in calls] == [0, 3, 6, 9, 12, 15, 18]
    assert monitor.steps_done == 20
    assert calls == monitor.history
    # Co-adaptation comes from the same probe pass, at the same steps.
    assert coads == monitor.coadaptation_history and [s for s, _ in coads] == [0, 3, 6, 9, 12, 15, 18]
    assert all(0.0 <= c <= 1.0 for _, c in coads)
    points = probes.probe_points(model) + ["fc1_tanh_unit0"]  # the pooled points, then one typical unit
    keys = {f"{p}.{stat}" for p in points for stat in ("p15", "p50", "p85", "mean", "log_std")}
    assert all(set(rec) == keys for _, rec in calls)
    first, last = calls[0][1], calls[-1][1]
    assert first["conv1_tanh.p15"] <= first["conv1_tanh.p50"] <= first["conv1_tanh.p85"]
    assert first["fc1_bn.mean"] != last["fc1_bn.mean"]  # it sees the weights as they train
    summary = cs.drift_summary(monitor.history)
    assert list(summary) == points
    conv1 = summary["conv1_bn"]
    mean_series = [rec["conv1_bn.mean"] for _, rec in calls]
    assert conv1["total_delta_mean"] == pytest.approx(mean_series[-1] - mean_series[0])
    assert conv1["mean_abs_delta_mean"] == pytest.approx(np.mean(np.abs(np.diff(mean_series))))
    assert conv1["mean_abs_delta_log_std"] > 0

    png = cs.plot_percentiles(monitor.history, tmp_path / "fig" / "icf.png", "bn_hidden")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A record by hand (what training does at the end) agrees with the stand-alone measures.
    end = monitor.record(monitor.steps_done)
    assert monitor.coadaptation_history[-1] == (20, pytest.approx(keras_measures.coadaptation(model, x[:16]), rel=1e-9))
    acts = probes.probe_activations(model, x[:16])
    unit_keys = [k for k in end if k.startswith("fc1_tanh_unit0.")]
    assert len(unit_keys) == 5
    unit_stats = {k: end.pop(k) for k in unit_keys}
    unit = unit_stats["fc1_tanh_unit0.p15"], unit_stats["fc1_tanh_unit0.p50"], unit_stats["fc1_tanh_unit0.mean"]
    assert end == pytest.approx(cs.probe_stats(acts), rel=1e-12)
    # The typical unit: unit 0 of fc1_tanh's input over the probe images, as NumPy computes it directly.
    column = acts["fc1_tanh"][:, 0].astype(np.float64)
    assert unit == pytest.approx((*np.percentile(column, [15, 50]), column.mean()), rel=1e-9)
    assert unit[0] != end["fc1_tanh.p15"]


def test_coadaptation_difference_is_paired_over_examples():
    rng = np.random.default_rng(5)
    independent = rng.normal(size=(400, 6))
    unit = rng.normal(size=(400, 1))
    duplicated = np.hstack([unit * k for k in (1, 2, -1, 3, 0.5, -2)]) + 0.01 * rng.normal(size=(400, 6))
    d = coad.coadaptation_difference(independent, duplicated, n_boot=300)
    assert d["difference"] == pytest.approx(coad.mean_abs_correlation(independent) - coad.mean_abs_correlation(duplicated))
    assert d["low"] <= d["difference"] <= d["high"] < -0.8  # clearly less co-adapted
    same = coad.coadaptation_difference(independent, independent, n_boot=50)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}  # paired: identical rows cancel exactly
    # Two draws of independent units differ only by chance: the interval covers 0.
    other = rng.normal(size=(400, 6))
    chance = coad.coadaptation_difference(independent, other, n_boot=300)
    assert chance["low"] < 0 < chance["high"]
    with pytest.raises(ValueError, match="same examples: 400 rows vs 399"):
        coad.coadaptation_difference(independent, other[:399])


def test_monitor_counts_steps_with_steps_per_execution():
    """Keras reports only the first batch of each execution; records land on the first step
    on or past each multiple, and the step count still ends at the true number of updates."""
    rng = np.random.default_rng(4)
    model = build_lenet(VariantSpec(name="bn_hidden", bn_hidden=True))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", steps_per_execution=2)
    x = rng.random((320, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, size=320)
    monitor = keras_measures.CovariateShiftMonitor(x[:8], every_n_batches=3)
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    assert [s for s, _ in monitor.history] == [0, 4, 6, 10, 12, 16, 18]
    assert monitor.steps_done == 20 and monitor.coadaptation_history == []
    assert int(model.optimizer.iterations.numpy()) == 20


def test_variance_ratios_in_batches_equal_one_pass():
    spec = VariantSpec(name="bn_dropout", bn_input=True, bn_hidden=True, dropout_input=0.2, dropout_hidden=0.5)
    model = build_lenet(spec)
    x = np.random.default_rng(3).random((53, 28, 28, 1), dtype=np.float32)
    one_pass = keras_measures.variance_ratios(model, x, batch_size=len(x))
    batched = keras_measures.variance_ratios(model, x, batch_size=7)  # uneven last batch on purpose
    assert set(one_pass) == {"input_bn", "conv1_bn", "conv2_bn", "conv3_bn", "fc1_bn"}
    for name in one_pass:
        # float32 forward passes of other batch sizes differ in the last bits (~1e-9 relative here)
        np.testing.assert_allclose(batched[name], one_pass[name], rtol=1e-6)
    direct = probes.probe_activations(model, x)["fc1_bn"].astype(np.float64).var(axis=0)
    bn = model.get_layer("fc1_bn")
    expected = (direct + bn.epsilon) / (bn.moving_variance.numpy().astype(np.float64) + bn.epsilon)
    np.testing.assert_allclose(one_pass["fc1_bn"], expected, rtol=1e-9)


def test_diagnostics_config_switches():
    from conftest import tiny_params
    from pipeline.core.errors import UserError
    from pipeline.core.params import Params

    def diagnostics_config(raw: dict):
        return Params.from_dict({**tiny_params(), **raw}).diagnostics

    d = diagnostics_config({"diagnostics": {}})
    assert (d.enabled, d.covariate_shift, d.coadaptation, d.variance_shift) == (True, True, True, True) and d.any
    assert not diagnostics_config({"diagnostics": {"enabled": False}}).any
    assert not diagnostics_config({"diagnostics": {"covariate_shift": False, "coadaptation": False,
                                                   "variance_shift": False, "recalibration": False}}).any
    assert diagnostics_config({"diagnostics": {"covariate_shift": False, "coadaptation": False,
                                               "variance_shift": False}}).any  # recalibration alone
    assert diagnostics_config({"diagnostics": {"coadaptation": False}}).any
    with pytest.raises(UserError, match="diagnostics.coadaptation.*must be true or false"):
        diagnostics_config({"diagnostics": {"coadaptation": "yes"}})
    with pytest.raises(UserError, match=r"unknown field\(s\) \['covariate'\]"):
        diagnostics_config({"diagnostics": {"covariate": False}})


def test_monitor_for_coadaptation_only():
    rng = np.random.default_rng(6)
    model = build_lenet(VariantSpec(name="plain", conv_bias=True))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    x = rng.random((64, 28, 28, 1), dtype=np.float32)
    monitor = keras_measures.CovariateShiftMonitor(x[:16], every_n_batches=2, coadaptation_layer="fc1_tanh",
                                       covariate_shift=False)
    model.fit(x, rng.integers(0, 10, size=64), batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    assert monitor.history == [(0, {}), (2, {})]
    assert [s for s, _ in monitor.coadaptation_history] == [0, 2] and monitor.last_output.shape == (16, 84)
    with pytest.raises(ValueError, match="nothing to record"):
        keras_measures.CovariateShiftMonitor(x, every_n_batches=2, covariate_shift=False)


def test_report_section_shows_only_what_was_measured(tmp_path):
    from types import SimpleNamespace

    from pipeline.compare import diagnostics as diagnostics_report
    from pipeline.compare import report

    rng = np.random.default_rng(7)
    base = rng.normal(size=(64, 84))
    acts = {"plain": base + rng.normal(size=(64, 1)),  # a shared component: correlated units
            "dropout": base}
    specs = {"plain": VariantSpec(name="plain", conv_bias=True),
             "dropout": VariantSpec(name="dropout", dropout_input=0.2, dropout_hidden=0.5)}
    runs = {}
    for v, a in acts.items():
        c = coad.mean_abs_correlation(a)
        runs[(v, 0)] = SimpleNamespace(seed=0, diagnostics={
            "summary": {"probe_size": 64, "every_n_batches": 100, "coadaptation_fc1": c,
                        "coadaptation_history": [[0, 0.1], [10, c]]},
            "fc1_activations": a.astype(np.float32)})
    section = diagnostics_report.section(runs, specs, tmp_path)
    md = report.render_diagnostics(section)
    assert "### Co-adaptation" in md and "### Internal covariate shift" not in md and "### Variance shift" not in md
    assert section.figures == ["coadaptation.png"] and (tmp_path / "coadaptation.png").exists()
    assert "![co-adaptation](figures/coadaptation.png)" in md
    assert sorted(section.metrics["diagnostics"]["coadaptation_fc1"]) == ["dropout", "plain"]
    claim = next(line for line in md.splitlines() if line.startswith("- dropout ("))
    assert claim.endswith(": lower with dropout."), claim
    ui = report.render_diagnostics(section, report.Links.mlflow_ui("r" * 32, "7"))
    assert f"![co-adaptation](get-artifact?path=figures%2Fcoadaptation.png&run_uuid={'r' * 32})" in ui


def test_dropout_counterparts_come_from_the_specs():
    """Which variants the diagnostics compare follows params.yaml's specs, whatever they are called."""
    from pipeline.compare.diagnostics import dropout_counterparts
    from pipeline.core.params import Params

    committed = Params.load(ROOT / "params.yaml").variants
    assert dropout_counterparts(committed) == [("dropout", "plain"), ("bn_dropout", "bn_hidden"),
                                               ("bn_dropout", "bn_all")]
    renamed = {"a": VariantSpec(name="a", bn_hidden=True, dropout_hidden=0.3),
               "b": VariantSpec(name="b", bn_hidden=True), "c": VariantSpec(name="c", bn_input=True),
               "d": VariantSpec(name="d", dropout_input=0.1), "e": VariantSpec(name="e")}
    assert dropout_counterparts(renamed) == [("a", "b"), ("d", "e")]


def test_variance_shift_claim_compares_each_counterpart_layer_by_layer(tmp_path):
    from types import SimpleNamespace

    from pipeline.compare import diagnostics as diagnostics_report
    from pipeline.compare import report

    specs = {"drop_bn": VariantSpec(name="drop_bn", bn_input=True, bn_hidden=True, dropout_input=0.2,
                                    dropout_hidden=0.5),
             "hidden": VariantSpec(name="hidden", bn_hidden=True),
             "both": VariantSpec(name="both", bn_input=True, bn_hidden=True)}
    shifts = {"drop_bn": {"input_bn": 1.4, "conv1_bn": 2.5, "fc1_bn": 1.0},
              "hidden": {"conv1_bn": 1.1, "fc1_bn": 1.2},
              "both": {"input_bn": 1.1, "conv1_bn": 1.1, "fc1_bn": 1.05}}
    runs = {(v, 0): SimpleNamespace(seed=0, diagnostics={"summary": {"variance_shift": s}}) for v, s in shifts.items()}
    section = diagnostics_report.section(runs, specs, tmp_path)
    assert list(section.variance_shift.index) == ["input_bn", "conv1_bn", "fc1_bn"]
    assert np.isnan(section.variance_shift.loc["input_bn", "hidden"])
    assert section.metrics["diagnostics"]["variance_shift_mean"]["hidden"] == pytest.approx(1.15)
    md = report.render_diagnostics(section)
    assert ("Li et al. explain `drop_bn`'s deficit by this shift. Compared with `hidden`, our numbers do not support "
            "it: the shift is larger with dropout in only 1 of 2 layers (conv1_bn: 2.500 vs 1.100, fc1_bn: 1.000 vs "
            "1.200). Compared with `both`, our numbers partly support it: the shift is larger with dropout in 2 of 3 "
            "layers (input_bn: 1.400 vs 1.100, conv1_bn: 2.500 vs 1.100, fc1_bn: 1.000 vs 1.050). That the shift "
            "is present does not by itself show it causes the lower accuracy.") in md
    assert section.figures == ["variance_shift.png"] and (tmp_path / "variance_shift.png").exists()


def test_drift_is_measured_after_batch_norms_moving_averages_settle(tmp_path):
    """The warm-up of the moving statistics (inference-mode probes see mean 0 / variance 1 at first) is left out:
    a history that jumps before the settled step and is flat after it has zero drift; its figure greys the warm-up."""
    from types import SimpleNamespace

    import pandas as pd

    from pipeline.compare import diagnostics as diagnostics_report

    settled = cs.settled_step()
    assert 0.99 ** settled < 0.01 <= 0.99 ** (settled - 1) and settled == 459
    steps = list(range(0, 1000, 100))
    mean = [5.0 * (s < settled) + 1.0 for s in steps]      # moves only while the averages warm up
    frame = pd.DataFrame({"step": steps, **{f"{p}.{stat}": mean if stat == "mean" else [0.0] * len(steps)
                                            for p in diagnostics_report.TANH_POINTS for stat in cs.PROBE_STATS}})
    records = cs.history_records(frame, settled)
    assert [s for s, _ in records] == [500, 600, 700, 800, 900] and records[0][1]["conv1_tanh.mean"] == 1.0
    spec = {"bn_hidden": VariantSpec(name="bn_hidden", bn_hidden=True)}
    runs = {("bn_hidden", 0): SimpleNamespace(seed=0, diagnostics={"summary": {"every_n_batches": 100}, "history": frame})}
    section = diagnostics_report.section(runs, spec, tmp_path)
    assert section.settled_step == settled and section.figures == ["covariate_shift.png"]
    assert section.drift.loc["bn_hidden", "conv1_tanh"] == (0.0, 0.0)
    everything = cs.drift_summary(cs.history_records(frame))["conv1_tanh"]["mean_abs_delta_mean_std"]
    assert everything > 0  # the same history measured from step 0 would call it drift
