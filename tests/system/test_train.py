"""The training stage in-process: real Keras on the fixture subset, a real temporary SQLite
MLflow store. Trainings are tiny (300 train / 200 test images, 1-2 epochs) and shared
between tests through module-scoped fixtures."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.entities import ViewType

from conftest import tiny_params
from pipeline.core import metric_names
from pipeline.core import ui_view
from pipeline.core import tracking
from pipeline.train.callbacks import METRIC_KEYS
from pipeline.core.errors import UserError
from pipeline.core.params import VariantSpec
from pipeline.core.tracking import mlflow_run
from pipeline.train.stage import train

TRAIN_LIMIT, TEST_LIMIT = 300, 200
EXPERIMENT = "test-study"
# Credentials MLflow would read for a server; they must never end up in the run. (The user
# name is not a secret: MLflow itself records it as the run's user, tag mlflow.user.)
SECRETS = {"MLFLOW_TRACKING_PASSWORD": "pw-5ecret-b29", "MLFLOW_TRACKING_TOKEN": "tok-5ecret-c83"}
BN_ALL_SITES = ["input", "conv1", "conv2", "conv3", "fc1"]


@dataclasses.dataclass
class Env:
    root: Path
    uri: str
    params_path: Path
    prepared: Path
    client: mlflow.MlflowClient

    def train(self, variant: str, seed: int = 0, **kw) -> dict:
        return train(variant, seed, params_path=self.params_path, prepared=self.prepared, **kw).record

    def n_runs(self) -> int:
        exps = self.client.search_experiments(view_type=ViewType.ALL)
        return len(self.client.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL))


@pytest.fixture(scope="module")
def env(tmp_path_factory, prepared_fixture):
    root = tmp_path_factory.mktemp("train")
    uri = f"sqlite:///{root}/mlflow.db"
    params_path = root / "params.yaml"
    params_path.write_text(yaml.safe_dump(tiny_params(train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "DVC_ROOT", "DVC_EXP_NAME"):
            mp.delenv(var, raising=False)
        for var, value in {**SECRETS, "MLFLOW_TRACKING_USERNAME": "study-user"}.items():
            mp.setenv(var, value)
        mlflow.set_tracking_uri(uri)
        tracking.prepare_experiment(EXPERIMENT)  # the store exists before any test counts its runs
        yield Env(root, uri, params_path, prepared_fixture, mlflow.MlflowClient(uri))
        assert mlflow.active_run() is None
        # Unset rather than restore: restoring the resolved default would pin it into the
        # environment for later tests and point them at the project's real store.
        mlflow.set_tracking_uri(None)


@dataclasses.dataclass
class Trained:
    record: dict
    run: object
    artifacts: Path  # the run's artifacts, downloaded

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def _trained(env: Env, record: dict) -> Trained:
    run = env.client.get_run(record["run_id"])
    dest = env.root / "downloads" / record["run_id"]
    dest.mkdir(parents=True)
    local = mlflow.artifacts.download_artifacts(run_id=record["run_id"], dst_path=str(dest))
    return Trained(record, run, Path(local))


@pytest.fixture(scope="module")
def bn_all(env) -> Trained:
    record = env.train("bn_all", 0, overrides={"epochs": 2}, record_dir=env.root / "record",
                       dvc_stage="train@bn_all-0")
    return _trained(env, record)


@pytest.fixture(scope="module")
def dropout(env) -> Trained:
    return _trained(env, env.train("dropout", 0))


@pytest.fixture(scope="module")
def held_out(prepared_fixture):
    x = np.load(prepared_fixture / "x_test.npy")[:TEST_LIMIT]
    y = np.load(prepared_fixture / "y_test.npy")[:TEST_LIMIT].astype(int)
    return x, y


def _model_id(env: Env, t: Trained) -> str:
    outputs = t.run.outputs.model_outputs
    assert len(outputs) == 1
    found = mlflow.search_logged_models(experiment_ids=[t.run.info.experiment_id],
                                        filter_string=f"source_run_id = '{t.run_id}'", output_format="list")
    assert [m.model_id for m in found] == [outputs[0].model_id]
    assert found[0].name == f"lenet5-{t.run.info.run_name}"
    return outputs[0].model_id


# --- the run ---------------------------------------------------------------------------------


def test_run_name_status_experiment(env, bn_all):
    info = bn_all.run.info
    assert info.run_name == "bn_all-s0"
    assert info.status == "FINISHED"
    assert env.client.get_experiment(info.experiment_id).name == EXPERIMENT
    assert bn_all.record["experiment_id"] == info.experiment_id
    assert mlflow.active_run() is None


def test_run_params(bn_all, prepared_fixture):
    params = bn_all.run.data.params
    expected_spec = VariantSpec(name="bn_all", bn_input=True, bn_hidden=True)
    for field in VariantSpec.model_fields:
        assert params[f"variant.{field}"] == str(getattr(expected_spec, field)), field
    assert {k: params[f"train.{k}"] for k in ("epochs", "batch_size", "learning_rate", "momentum", "shuffle",
                                             "seed", "train_limit", "test_limit")} == {
        "epochs": "2", "batch_size": "128", "learning_rate": "0.01", "momentum": "0.0", "shuffle": "True",
        "seed": "0", "train_limit": str(TRAIN_LIMIT), "test_limit": str(TEST_LIMIT)}
    assert params["data.n_train"] == str(TRAIN_LIMIT)
    assert params["data.n_test"] == str(TEST_LIMIT)
    summary = json.loads((prepared_fixture.parent / "summary.json").read_text())
    assert params["data.train_digest"] == summary["train"]["digest"] != ""
    assert params["data.test_digest"] == summary["test"]["digest"] != ""
    assert params["model.params_total"] == "546432"


def test_run_tags(env, bn_all):
    tags = bn_all.run.data.tags
    assert tags["variant"] == "bn_all"
    assert tags["seed"] == "0"
    assert "git_commit" in tags
    assert tags["dvc_stage"] == "train@bn_all-0"
    assert tags["tracking_store"] == env.uri
    assert tags["mlflow.runName"] == "bn_all-s0"


def test_no_credentials_anywhere(env, bn_all):
    logged = {**bn_all.run.data.params, **bn_all.run.data.tags}
    texts = list(logged) + list(logged.values())
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{_model_id(env, bn_all)}",
                                                         dst_path=str(env.root / "model-scan")))
    files = [p for d in (bn_all.artifacts, model_dir) for p in d.rglob("*") if p.is_file()]
    assert len(files) > 5
    blobs = [p.read_bytes() for p in files]
    for secret in SECRETS.values():
        assert not any(secret in t for t in texts)
        assert not any(secret.encode() in b for b in blobs)


# --- metrics ---------------------------------------------------------------------------------


def test_metric_histories_have_one_point_per_epoch(env, bn_all):
    for key in METRIC_KEYS:
        history = env.client.get_metric_history(bn_all.run_id, metric_names.EPOCH[key])
        assert sorted(m.step for m in history) == [1, 2], key
        assert all(np.isfinite(m.value) for m in history)
    for key in (metric_names.TRAIN_ACCURACY, metric_names.TEST_ACCURACY):
        assert all(0.0 <= m.value <= 1.0 for m in env.client.get_metric_history(bn_all.run_id, key))


def test_final_metrics(env, bn_all):
    metrics = bn_all.run.data.metrics
    last = {key: max(env.client.get_metric_history(bn_all.run_id, metric_names.EPOCH[key]),
                     key=lambda m: m.step).value
            for key in METRIC_KEYS}
    assert metrics[metric_names.TEST_ACCURACY] == last["test_accuracy"] == bn_all.record["test_accuracy"]
    assert metrics[metric_names.TEST_LOSS] == last["test_loss"] == bn_all.record["test_loss"]
    assert metrics[metric_names.TRAIN_SECONDS] > 0
    assert metrics[metric_names.IMAGES_PER_SECOND] == pytest.approx(2 * TRAIN_LIMIT / metrics[metric_names.TRAIN_SECONDS])
    assert bn_all.record["parameters"] == 546_432


# --- artifacts -------------------------------------------------------------------------------


def test_bn_weights_match_the_logged_model(env, bn_all):
    bn_dir = bn_all.artifacts / "bn_weights"
    assert sorted(p.name for p in bn_dir.iterdir()) == sorted(
        [f"{s}.npz" for s in BN_ALL_SITES] + ["summary.json", "distributions.png"])
    assert (bn_dir / "distributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    model = mlflow.keras.load_model(f"models:/{_model_id(env, bn_all)}")
    bn = {layer.name.removesuffix("_bn"): layer for layer in model.layers if layer.name.endswith("_bn")}
    assert sorted(bn) == sorted(BN_ALL_SITES)
    summary = json.loads((bn_dir / "summary.json").read_text())
    assert sorted(summary) == sorted(BN_ALL_SITES)
    for site, layer in bn.items():
        with np.load(bn_dir / f"{site}.npz") as saved:
            assert sorted(saved.files) == ["beta", "gamma", "moving_mean", "moving_variance"]
            for name in saved.files:
                np.testing.assert_array_equal(saved[name], getattr(layer, name).numpy(), err_msg=f"{site}.{name}")
                assert summary[site][name]["n"] == saved[name].size
                assert summary[site][name]["mean"] == pytest.approx(float(saved[name].mean()))
        # trained: the moving statistics moved away from their initial 0 / 1
        assert not np.allclose(layer.moving_mean.numpy(), 0.0)


def test_model_summary(bn_all):
    text = (bn_all.artifacts / "model_summary.txt").read_text()
    assert 'Model: "lenet5_bn_all"' in text
    assert "Trainable params: 545,978" in text and "Non-trainable params: 454" in text
    assert "Param #" in text  # the table is not cropped to the console width
    rows = {line.split()[1]: line for line in text.splitlines() if line.startswith("│")}
    for name, count in (("input_bn", "4"), ("conv1", "150"), ("conv1_bn", "24"), ("conv3", "48,120"),
                        ("fc1", "494,004"), ("fc1_tanh", "0"), ("output", "850")):
        assert rows[name].rstrip("│ ").endswith(f" {count}"), rows[name]


def test_predictions_and_confusion_matrix(env, bn_all, held_out):
    x, y = held_out
    pred = pd.read_csv(bn_all.artifacts / "predictions.csv")
    assert list(pred.columns) == ["index", "label", "predicted", "probability", "correct"]
    assert len(pred) == TEST_LIMIT
    assert pred["index"].tolist() == list(range(TEST_LIMIT))
    assert pred["label"].tolist() == y.tolist()

    model = mlflow.keras.load_model(f"runs:/{bn_all.run_id}/lenet5-bn_all-s0")
    probs = model.predict(x, batch_size=1000, verbose=0)
    assert pred["predicted"].tolist() == probs.argmax(axis=1).tolist()
    np.testing.assert_allclose(pred["probability"], probs.max(axis=1), atol=1e-5)
    assert pred["correct"].tolist() == (pred["predicted"] == pred["label"]).astype(int).tolist()
    assert pred["correct"].mean() == pytest.approx(bn_all.run.data.metrics[metric_names.TEST_ACCURACY], abs=1e-6)

    cm = pd.read_csv(bn_all.artifacts / "confusion_matrix.csv", index_col=0)
    assert cm.shape == (10, 10)
    assert list(cm.index) == [f"true_{i}" for i in range(10)]
    assert int(cm.values.sum()) == TEST_LIMIT
    assert int(np.trace(cm.values)) == int(pred["correct"].sum())
    assert cm.sum(axis=1).tolist() == np.bincount(y, minlength=10).tolist()


def test_logged_model_loads_as_keras_and_pyfunc(env, bn_all, held_out):
    x, _ = held_out
    uri = f"models:/{_model_id(env, bn_all)}"
    keras_model = mlflow.keras.load_model(uri)
    assert keras_model.name == "lenet5_bn_all"
    pyfunc = mlflow.pyfunc.load_model(uri)
    assert pyfunc.metadata.run_id == bn_all.run_id
    for out in (keras_model.predict(x[:7], verbose=0), np.asarray(pyfunc.predict(x[:7]))):
        assert out.shape == (7, 10)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_the_logged_model_is_named_for_its_variant_and_carries_its_final_metrics(env, bn_all):
    """One model per run, ``lenet5-<variant>-s<seed>``, holding the last epoch's metrics (and no
    diagnostics), each with the dataset it was measured on; a version of the study's registered
    model with alias ``<variant>-s<seed>``."""
    model = env.client.get_logged_model(_model_id(env, bn_all))
    assert model.name == "lenet5-bn_all-s0"
    assert model.tags["variant"] == "bn_all" and model.tags["seed"] == "0"
    assert model.params["variant.bn_input"] == "True"
    final = {m.key: m for m in model.metrics}
    assert sorted(final) == sorted(metric_names.EPOCH.values())
    assert len(model.metrics) == 4
    run = bn_all.run.data.metrics
    for key, m in final.items():
        assert m.step == 2 and m.value == run[key], key
        assert m.dataset_name == ("mnist-test" if "/test_" in key else "mnist-train"), key
    assert final[metric_names.TEST_ACCURACY].value == bn_all.record["test_accuracy"]
    # linking added no point to the run's own curves
    assert [p.step for p in env.client.get_metric_history(bn_all.run_id, metric_names.TEST_ACCURACY)] == [1, 2]

    version = env.client.get_model_version_by_alias(EXPERIMENT, "bn_all-s0")
    assert version.source == f"models:/{model.model_id}" and version.run_id == bn_all.run_id
    assert version.tags == {"variant": "bn_all", "seed": "0"}


def test_the_experiment_opens_as_model_development_with_the_study_view(env):
    exp = env.client.get_experiment_by_name(EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "by_epoch" in exp.tags["mlflow.note.content"]
    view = json.loads(exp.tags["mlflow.sharedViewState.study"])
    assert view["orderByKey"] == f"metrics.`{metric_names.TEST_ACCURACY}`" and view["orderByAsc"] is False
    assert view["selectedColumns"][:4] == ["tags.`variant`", "tags.`seed`", f"metrics.`{metric_names.TEST_ACCURACY}`",
                                           f"metrics.`{metric_names.TEST_LOSS}`"]
    assert ui_view.ui_url("http://127.0.0.1:5000/", exp.experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        "&viewStateShareKey=study")
    # an experiment made before these tags gets them; a description someone wrote stays
    old = env.client.create_experiment("test-old-experiment", tags={"mlflow.note.content": "mine"})
    assert tracking.prepare_experiment("test-old-experiment") == old
    tags = env.client.get_experiment(old).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development" and tags["mlflow.note.content"] == "mine"
    # without the variants the view cannot name their groups; a training (which knows them) closes each one
    assert json.loads(tags["mlflow.sharedViewState.study"]) == {**view, "groupsExpanded": {}}
    tracking.prepare_experiment("test-old-experiment", variants=["plain", "bn_all"])
    assert json.loads(env.client.get_experiment(old).tags["mlflow.sharedViewState.study"]) == {
        **view, "groupsExpanded": {"tag.variant.plain": False, "tag.variant.bn_all": False}}


def test_dataset_inputs(bn_all):
    inputs = bn_all.run.inputs.dataset_inputs
    assert len(inputs) == 2
    by_context = {}
    for di in inputs:
        context = {t.key: t.value for t in di.tags}["mlflow.data.context"]
        by_context[context] = di.dataset
    assert sorted(by_context) == ["testing", "training"]
    assert by_context["training"].name == "mnist-train" and by_context["testing"].name == "mnist-test"
    assert by_context["training"].digest and by_context["testing"].digest
    assert by_context["training"].digest != by_context["testing"].digest
    assert json.loads(by_context["training"].profile)["features_shape"] == [TRAIN_LIMIT, 28, 28, 1]
    assert json.loads(by_context["testing"].profile)["targets_shape"] == [TEST_LIMIT]


def test_dropout_run_has_no_bn_weights(env, dropout):
    assert dropout.run.info.status == "FINISHED"
    assert dropout.run.data.params["variant.dropout_hidden"] == "0.5"
    top = {a.path for a in env.client.list_artifacts(dropout.run_id)}
    assert "predictions.csv" in top and "model_summary.txt" in top
    assert "bn_weights" not in top
    assert not (dropout.artifacts / "bn_weights").exists()
    assert dropout.record["parameters"] == 545_524


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_numbers_other_seed_other_numbers(env):
    runs = [_trained(env, env.train("bn_dropout", seed)) for seed in (0, 0, 1)]
    m = [r.run.data.metrics for r in runs]
    preds = [pd.read_csv(r.artifacts / "predictions.csv") for r in runs]
    assert runs[0].run_id != runs[1].run_id
    for key in metric_names.EPOCH.values():
        assert m[0][key] == m[1][key], key
    pd.testing.assert_frame_equal(preds[0], preds[1])
    for site in BN_ALL_SITES:
        with np.load(runs[0].artifacts / "bn_weights" / f"{site}.npz") as a, \
                np.load(runs[1].artifacts / "bn_weights" / f"{site}.npz") as b:
            for name in a.files:
                np.testing.assert_array_equal(a[name], b[name])
    assert m[2][metric_names.TEST_LOSS] != m[0][metric_names.TEST_LOSS]
    assert m[2][metric_names.TRAIN_LOSS] != m[0][metric_names.TRAIN_LOSS]
    assert not preds[2]["probability"].equals(preds[0]["probability"])
    assert runs[2].run.info.run_name == "bn_dropout-s1"


# --- the DVC record --------------------------------------------------------------------------


def test_record_matches_the_run(env, bn_all):
    record_dir = env.root / "record"
    assert sorted(p.name for p in record_dir.iterdir()) == ["convergence.csv", "history.csv", "metrics.json",
                                                            "record.json"]
    record = json.loads((record_dir / "record.json").read_text())
    metrics = bn_all.run.data.metrics
    # dvc metrics shows only what a user compares: the test metrics of the run
    assert json.loads((record_dir / "metrics.json").read_text()) == {
        "test_loss": metrics[metric_names.TEST_LOSS], "test_accuracy": metrics[metric_names.TEST_ACCURACY]}
    assert record["run_id"] == bn_all.run_id
    assert record["variant"] == "bn_all" and record["seed"] == 0
    assert record["test_loss"] == metrics[metric_names.TEST_LOSS]
    assert record["test_accuracy"] == metrics[metric_names.TEST_ACCURACY]

    history = pd.read_csv(record_dir / "history.csv")
    assert list(history.columns) == ["epoch", *METRIC_KEYS]
    assert history["epoch"].tolist() == [1, 2]
    for key in METRIC_KEYS:
        logged = sorted(env.client.get_metric_history(bn_all.run_id, metric_names.EPOCH[key]), key=lambda m: m.step)
        np.testing.assert_allclose(history[key], [m.value for m in logged], rtol=1e-12)
    artifact_history = pd.read_csv(bn_all.artifacts / "history.csv")
    pd.testing.assert_frame_equal(artifact_history, history)

    # 2 epochs of 3 steps, a point every 100 steps: before the first update and at the end
    convergence = pd.read_csv(record_dir / "convergence.csv")
    logged = sorted(env.client.get_metric_history(bn_all.run_id, metric_names.CONVERGENCE_ACCURACY),
                    key=lambda m: m.step)
    assert convergence["step"].tolist() == [m.step for m in logged] == [0, 6]
    np.testing.assert_allclose(convergence["test_accuracy"], [m.value for m in logged], rtol=1e-12)


# --- bad input fails before any run ----------------------------------------------------------


def test_unknown_variant_fails_before_a_run(env):
    before = env.n_runs()
    with pytest.raises(UserError, match="known variants: bn_all, bn_dropout, bn_hidden, dropout, plain"):
        env.train("nope")
    assert env.n_runs() == before


def test_zero_epochs_fails_before_a_run(env):
    before = env.n_runs()
    with pytest.raises(UserError, match=r"'train\.epochs' = 0"):
        env.train("plain", overrides={"epochs": 0})
    assert env.n_runs() == before


@pytest.mark.parametrize("rate", [-1.0, 0.0])
def test_a_bad_grid_rate_is_refused_naming_the_flag_before_a_run(env, rate):
    before = env.n_runs()
    with pytest.raises(UserError, match=rf"^--grid-rate = {rate} is invalid: must be a learning rate > 0$"):
        env.train("plain", grid_rate=rate, record_dir=env.root / "never")
    assert not (env.root / "never").exists()
    assert env.n_runs() == before


def test_lr_grid_epochs_shortens_grid_trainings_only_and_the_flag_still_wins(env, tmp_path):
    """lr_grid.epochs = 1 with train.epochs = 2: a grid training trains 1 epoch (logged as such);
    the study's training keeps 2; --epochs given with --grid-rate overrides both."""
    params = tiny_params(train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT, epochs=2)
    params["lr_grid"] = {"learning_rates": [0.05], "seeds": [0], "validation_images": 100, "epochs": 1}
    params["diagnostics"]["enabled"] = False
    params["convergence"]["enabled"] = False
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))

    def epochs_of(**kw) -> tuple[str, int]:
        result = train("plain", 0, params_path=path, prepared=env.prepared, **kw)
        run = env.client.get_run(result.record["run_id"])
        return run.data.params["train.epochs"], len(env.client.get_metric_history(run.info.run_id,
                                                                                   metric_names.TEST_ACCURACY))

    assert epochs_of(grid_rate=0.05) == ("1", 1)
    assert epochs_of() == ("2", 2)
    assert epochs_of(grid_rate=0.05, overrides={"epochs": 3}) == ("3", 3)


def test_a_grid_training_measures_only_what_the_choice_reads(env, tmp_path):
    """With diagnostics and convergence checks on in params.yaml, a grid training logs neither (the choice
    reads its validation metrics only) and registers no model; the study's training logs both."""
    params = tiny_params(train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT)
    params["lr_grid"] = {"learning_rates": [0.05], "seeds": [0], "validation_images": 100, "epochs": None}
    params["mlflow"]["experiment"] = "test-grid-cost"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    grid = train("bn_all", 0, params_path=path, prepared=env.prepared, grid_rate=0.05)
    study = train("bn_all", 0, params_path=path, prepared=env.prepared)
    runs = {name: env.client.get_run(result.run_id) for name, result in (("grid", grid), ("study", study))}
    assert runs["grid"].data.params["diagnostics.enabled"] == "False"
    assert runs["grid"].data.params["convergence.enabled"] == "False"
    assert not [k for k in runs["grid"].data.metrics if k.startswith(("diagnostics/", "convergence/"))]
    assert metric_names.VALIDATION_ACCURACY in runs["grid"].data.metrics
    assert "diagnostics" not in {a.path for a in env.client.list_artifacts(grid.run_id)}
    assert [k for k in runs["study"].data.metrics if k.startswith("diagnostics/")]
    assert metric_names.CONVERGENCE_ACCURACY in runs["study"].data.metrics
    assert [v.run_id for v in env.client.search_model_versions("name = 'test-grid-cost'")] == [study.run_id]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "http://bob:hunter2@127.0.0.1:9/"])
def test_unreachable_server_fails_fast_before_a_run(env, monkeypatch, uri):
    before = env.n_runs()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(UserError, match="unreachable") as exc:
        env.train("plain", record_dir=env.root / "never")
    assert time.monotonic() - start < 15
    assert "127.0.0.1:9" in str(exc.value) and "hunter2" not in str(exc.value)
    assert not (env.root / "never").exists()
    assert env.n_runs() == before
    assert mlflow.active_run() is None


# --- the run's final status ------------------------------------------------------------------


@pytest.fixture
def run_experiment(env) -> str:
    return tracking.prepare_experiment("test-mlflow-run")


def _status(env: Env, run_id: str) -> str:
    return env.client.get_run(run_id).info.status


def test_mlflow_run_finished(env, run_experiment):
    with mlflow_run(run_experiment, "ok", {"k": "v"}) as run:
        mlflow.log_param("a", 1)
        assert _status(env, run.info.run_id) == "RUNNING"
    assert mlflow.active_run() is None
    got = env.client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "ok" and got.data.tags["k"] == "v"
    assert got.info.experiment_id == run_experiment


def test_mlflow_run_interrupted_is_killed(env, run_experiment):
    with pytest.raises(KeyboardInterrupt):
        with mlflow_run(run_experiment, "interrupted", {}) as run:
            raise KeyboardInterrupt
    assert mlflow.active_run() is None
    assert _status(env, run.info.run_id) == "KILLED"


def test_mlflow_run_error_is_failed(env, run_experiment):
    with pytest.raises(ValueError, match="boom"):
        with mlflow_run(run_experiment, "broken", {}) as run:
            raise ValueError("boom")
    assert mlflow.active_run() is None
    assert _status(env, run.info.run_id) == "FAILED"


def test_mlflow_run_reuses_a_launcher_run_in_the_same_experiment(env, run_experiment, monkeypatch):
    launcher = env.client.create_run(run_experiment)
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    with mlflow_run(run_experiment, "launched", {}) as run:
        pass
    assert run.info.run_id == launcher.info.run_id
    assert _status(env, launcher.info.run_id) == "FINISHED"


def test_mlflow_run_launcher_in_another_experiment_is_the_training_run(env, run_experiment, monkeypatch):
    """`mlflow run` without --experiment-name opens its run in Default: training goes into it
    (renamed, tagged), so the command leaves one run, where the user asked for it."""
    launcher = env.client.create_run("0")
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    with mlflow_run(run_experiment, "elsewhere-s0", {"variant": "elsewhere"}) as run:
        pass
    assert run.info.run_id == launcher.info.run_id and run.info.experiment_id == "0"
    finished = env.client.get_run(launcher.info.run_id)
    assert finished.info.status == "FINISHED" and finished.info.run_name == "elsewhere-s0"
    assert finished.data.tags["variant"] == "elsewhere"
    assert env.client.search_runs([run_experiment], filter_string="attributes.run_name = 'elsewhere-s0'") == []


def test_a_failing_training_under_mlflow_run_leaves_its_run_failed_not_running(env, monkeypatch):
    launcher = env.client.create_run("0")
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    with pytest.raises(UserError, match="unknown variant"):
        env.train("nope")
    # rejected before the run was touched: mlflow run itself ends it (FAILED) when the command exits 2
    assert env.client.get_run(launcher.info.run_id).info.status == "RUNNING"
    with pytest.raises(ValueError, match="boom"):
        with mlflow_run("0", "broken-s0", {}):
            raise ValueError("boom")
    assert env.client.get_run(launcher.info.run_id).info.status == "FAILED"


# --- The input pipeline ------------------------------------------------------------


def _epochs_of(ds, n_epochs: int) -> list[np.ndarray]:
    """The order of the examples in each of ``n_epochs`` passes over ``ds`` (x holds indices)."""
    return [np.concatenate([x.numpy().ravel() for x, _ in ds]) for _ in range(n_epochs)]


def test_batches_shuffle_every_image_once_per_epoch_new_order_each_epoch():
    from pipeline.train.inputs import batches

    n, bs = 1000, 128
    x = np.arange(n, dtype=np.float32).reshape(n, 1)
    y = np.arange(n, dtype=np.int64) % 10
    ds = batches(x, y, bs, shuffle=True, seed=3)
    sizes = [len(b[0]) for b in ds]
    assert sizes == [bs] * (n // bs) + [n % bs]
    first, second = _epochs_of(ds, 2)
    assert sorted(first.tolist()) == list(range(n)) and sorted(second.tolist()) == list(range(n))
    assert not np.array_equal(first, second), "every epoch needs a new order"
    assert not np.array_equal(first, np.arange(n))
    for xb, yb in ds.take(2):  # labels travel with their images
        np.testing.assert_array_equal(yb.numpy(), xb.numpy().ravel().astype(np.int64) % 10)


def test_batches_same_seed_same_order_other_seed_other_order():
    from pipeline.train.inputs import batches

    x = np.arange(500, dtype=np.float32).reshape(500, 1)
    y = np.zeros(500, dtype=np.int64)
    a = _epochs_of(batches(x, y, 64, shuffle=True, seed=0), 2)
    b = _epochs_of(batches(x, y, 64, shuffle=True, seed=0), 2)
    c = _epochs_of(batches(x, y, 64, shuffle=True, seed=1), 2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_batches_unshuffled_keep_order_and_autotune_is_off():
    from pipeline.train.inputs import batches

    x = np.arange(300, dtype=np.float32).reshape(300, 1)
    ds = batches(x, np.zeros(300, dtype=np.int64), 100)
    (order,) = _epochs_of(ds, 1)
    np.testing.assert_array_equal(order, np.arange(300))
    assert ds.options().autotune.enabled is False
    assert ds.options().deterministic is True


# --- diagnostics switches ----------------------------------------------------------------------


def _train_with_diagnostics(env: Env, name: str, **switches) -> tuple[object, set[str]]:
    params = tiny_params(train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT)
    params["diagnostics"].update(switches)
    path = env.root / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    record = train("bn_hidden", 0, params_path=path, prepared=env.prepared).record
    run = env.client.get_run(record["run_id"])
    return run, {a.path for a in env.client.list_artifacts(record["run_id"], "diagnostics")}


def _train_with_convergence(env: Env, name: str, **settings) -> tuple[object, object]:
    params = tiny_params(train_limit=TRAIN_LIMIT, test_limit=TEST_LIMIT, epochs=2)
    params["convergence"].update(settings)
    path = env.root / f"params-{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    result = train("bn_dropout", 3, params_path=path, prepared=env.prepared)
    return result, env.client.get_run(result.run_id)


def test_convergence_is_measured_every_k_steps_and_leaves_training_unchanged(env, held_out):
    on, run_on = _train_with_convergence(env, "conv-every-2", every_steps=2, images=50)
    off, run_off = _train_with_convergence(env, "conv-off", enabled=False)
    # 2 epochs of 3 steps (300 images, batch 128): steps 0, 2, 4 and the end of training
    assert [point["step"] for point in on.convergence] == [0, 2, 4, 6]
    logged = sorted(env.client.get_metric_history(on.run_id, metric_names.CONVERGENCE_ACCURACY), key=lambda m: m.step)
    assert [(m.step, m.value) for m in logged] == [(p["step"], p["test_accuracy"]) for p in on.convergence]
    # the last point is the final model's accuracy on 50 test images drawn at random with the subset's own seed
    x, y = held_out
    idx = np.sort(np.random.default_rng(0).choice(len(y), size=50, replace=False))
    assert list(idx) != list(range(50))  # not the first 50
    final = (on.model.predict(x[idx], verbose=0).argmax(axis=1) == y[idx]).mean()
    assert on.convergence[-1]["test_accuracy"] == pytest.approx(final, abs=1e-9)
    assert run_on.data.params["convergence.every_steps"] == "2" and run_on.data.params["convergence.images"] == "50"
    assert 0 < run_on.data.metrics[metric_names.CONVERGENCE_SECONDS] < run_on.data.metrics[metric_names.TRAIN_SECONDS]
    # measuring reads the weights only: the same seed trains to the same numbers without it
    assert off.convergence == [] and metric_names.CONVERGENCE_ACCURACY not in run_off.data.metrics
    for key in metric_names.EPOCH.values():
        assert run_on.data.metrics[key] == run_off.data.metrics[key], key


def test_each_diagnostic_can_be_switched_off(env):
    run, files = _train_with_diagnostics(env, "coad-only", covariate_shift=False, variance_shift=False,
                                         recalibration=False)
    metrics = run.data.metrics
    assert not [k for k in metrics if k.startswith(("diagnostics/covariate_shift/", "diagnostics/variance_shift/"))]
    assert files == {"diagnostics/summary.json", "diagnostics/fc1_activations.npy"}
    steps = sorted(m.step for m in env.client.get_metric_history(run.info.run_id, metric_names.COADAPTATION_FC1))
    assert steps == [0, 3]  # before the first update, and at the end (3 steps of 128 images)
    assert 0.0 <= metrics[metric_names.COADAPTATION_FC1] <= 1.0
    assert run.data.params["diagnostics.covariate_shift"] == "False"

    run, files = _train_with_diagnostics(env, "no-coad", coadaptation=False)
    metrics = run.data.metrics
    assert not [k for k in metrics if k.startswith("diagnostics/coadaptation")]
    assert {"diagnostics/covariate_shift/conv1_tanh/p50", "diagnostics/variance_shift/fc1_bn"} <= set(metrics)
    assert files == {"diagnostics/summary.json", "diagnostics/history.csv", "diagnostics/covariate_shift.png",
                     "diagnostics/recalibrated_predictions.csv"}

    for name, switches in (("all-off", {"covariate_shift": False, "coadaptation": False, "variance_shift": False,
                                         "recalibration": False}),
                           ("master-off", {"enabled": False})):
        run, files = _train_with_diagnostics(env, name, **switches)
        assert files == set(), name
        assert not [k for k in run.data.metrics if k.startswith(("diagnostics/", "timing/diagnostics"))]
        assert run.data.metrics[metric_names.TEST_ACCURACY] > 0  # training itself is unaffected


def test_an_interrupt_python_swallowed_still_stops_training_at_the_next_batch(env):
    """run_main's handler notes every SIGINT/SIGTERM; if the KeyboardInterrupt it raised was lost
    (raised inside a weakref callback, Python only prints "Exception ignored"), training
    raises it again at its next batch, and the run ends KILLED with no record."""
    from pipeline.core import cli

    cli.pending_signals.append(15)
    try:
        with pytest.raises(KeyboardInterrupt, match="signal 15 .raised again at the next batch."):
            env.train("plain", 7, record_dir=env.root / "swallowed")
    finally:
        cli.pending_signals.clear()
    exp = env.client.get_experiment_by_name(EXPERIMENT)
    runs = env.client.search_runs([exp.experiment_id], "attributes.run_name = 'plain-s7'",
                                  run_view_type=ViewType.ALL)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert not env.client.get_metric_history(runs[0].info.run_id, metric_names.TRAIN_LOSS)  # stopped before epoch 1 ended
    assert not (env.root / "swallowed").exists()


@pytest.fixture
def stage_signal_handlers():
    """run_main's SIGINT/SIGTERM handlers in this process for one test, then the previous ones."""
    import signal

    from pipeline.core import cli

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    cli.install_signal_handlers()
    cli.pending_signals.clear()
    yield cli
    cli.pending_signals.clear()
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_a_signal_during_fit_is_raised_at_the_next_batch_not_inside_keras(env, stage_signal_handlers):
    """SIGINT arriving inside Keras (here: a batch callback) does not raise there, where it could
    unwind TensorFlow's or SQLite's glue half-way (the process once died -11 instead of exiting 130);
    the training raises it at the next batch, and the run ends KILLED with no record."""
    import os
    import signal

    import keras

    from pipeline.train.stage import TrainOptions

    seen: list[tuple[int, str]] = []

    class KillAtBatch2(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((batch, "end"))
            if batch == 2:
                os.kill(os.getpid(), signal.SIGINT)
                seen.append((batch, "kill returned"))  # reached only if the signal did not raise here

    with pytest.raises(KeyboardInterrupt, match=r"signal 2 \(raised again at the next batch\)"):
        env.train("plain", 8, record_dir=env.root / "deferred", options=TrainOptions(callbacks=[KillAtBatch2()]))
    assert seen == [(0, "end"), (1, "end"), (2, "end"), (2, "kill returned")]
    exp = env.client.get_experiment_by_name(EXPERIMENT)
    runs = env.client.search_runs([exp.experiment_id], "attributes.run_name = 'plain-s8'", run_view_type=ViewType.ALL)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert not (env.root / "deferred").exists()


def test_a_second_signal_or_leaving_the_loop_raises_a_deferred_one(stage_signal_handlers):
    import os
    import signal

    cli = stage_signal_handlers
    with pytest.raises(KeyboardInterrupt, match=r"^signal 15$"):
        with cli.signals_at_safe_points():
            os.kill(os.getpid(), signal.SIGINT)   # noted only
            os.kill(os.getpid(), signal.SIGTERM)  # Ctrl-C twice: at once
    cli.pending_signals.clear()
    with pytest.raises(KeyboardInterrupt, match=r"signal 2 \(raised again"):
        with cli.signals_at_safe_points():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now and did not raise
    cli.pending_signals.clear()
    with cli.signals_at_safe_points():
        pass  # nothing pending: nothing raised
    with pytest.raises(KeyboardInterrupt, match=r"^signal 2$"):
        os.kill(os.getpid(), signal.SIGINT)  # outside: at once, as before
        time.sleep(0.05)


def test_train_returns_its_result_and_takes_callbacks_and_compile_options(env):
    """A caller (benchmark, cluster executor) gets the model, history and metrics back and adds
    its own callbacks and compile options; nothing in the stage is patched."""
    import keras

    from pipeline.core.params import Params
    from pipeline.train.stage import TrainOptions

    seen: list[int] = []

    class Counter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    params = Params.load(env.params_path).with_train({"epochs": 2})
    result = train("plain", 3, params=params, prepared=env.prepared,
                   options=TrainOptions(callbacks=(Counter(),), compile={"steps_per_execution": 3}))
    assert seen == [0, 1]
    assert int(result.model.steps_per_execution) == 3
    assert [row["epoch"] for row in result.history] == [1, 2]
    run = env.client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["seed"] == "3"
    assert (result.metrics["test_accuracy"] == run.data.metrics[metric_names.TEST_ACCURACY]
            == result.history[-1]["test_accuracy"])
    assert result.record["run_id"] == result.run_id and result.record["parameters"] == 545_546
    # the model handed back is the trained one: it reproduces the final test accuracy
    data = np.load(env.prepared / "x_test.npy")[:TEST_LIMIT], np.load(env.prepared / "y_test.npy")[:TEST_LIMIT]
    accuracy = float((result.model.predict(data[0], verbose=0).argmax(axis=1) == data[1]).mean())
    assert accuracy == pytest.approx(result.metrics["test_accuracy"], abs=1e-6)
