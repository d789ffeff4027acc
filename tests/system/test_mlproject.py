"""`mlflow run .` end to end in a fresh copy of the project: the MLproject entry point
prepares the data itself, trains in the current interpreter and lands in the study's
experiment; a bad variant fails with a message that helps."""

from __future__ import annotations

import subprocess

import mlflow
import pytest
from mlflow.entities import ViewType

from conftest import VENV_BIN, make_project_copy, subprocess_env, tiny_params
from pipeline.core import metric_names

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlproject")
    copy = make_project_copy(tmp / "p", tiny_params())
    return copy, subprocess_env(tmp)


def _mlflow_run(project, *args: str) -> subprocess.CompletedProcess:
    copy, env = project
    return subprocess.run([str(VENV_BIN / "mlflow"), "run", ".", *args, "--env-manager", "local"], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=300)


def _unfinished(env) -> list[str]:
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return [r.info.run_name for r in client.search_runs(exps, run_view_type=ViewType.ALL)
            if r.info.status == "RUNNING"]


def test_mlflow_run_prepares_data_and_trains(project):
    copy, env = project
    assert not (copy / "data" / "prepared").exists()
    proc = _mlflow_run(project, "-P", "variant=dropout", "-P", "epochs=1", "-P", "train_limit=300",
                       "-P", "test_limit=200")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert (copy / "data" / "prepared" / f"{name}.npy").is_file()

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("test-study")
    assert exp is not None  # the study's experiment exists (the model is registered under its name)
    # without --experiment-name, mlflow run puts its run in Default: the one training run is there
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL)
    assert [(r.info.run_name, r.info.experiment_id) for r in runs] == [("dropout-s0", "0")]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "1"
    assert run.data.params["data.n_train"] == "300" and run.data.params["data.n_test"] == "200"
    assert run.data.params["variant.name"] == "dropout"
    assert run.data.metrics[metric_names.TEST_ACCURACY] >= 0
    assert _unfinished(env) == []  # the launcher's run was closed too
    [model] = client.search_logged_models(experiments)
    assert model.name == "lenet5-dropout-s0" and model.source_run_id == run.info.run_id

    # the README's command names the study's experiment: one more run, there
    proc = _mlflow_run(project, "-P", "variant=plain", "-P", "epochs=1", "-P", "train_limit=300",
                       "-P", "test_limit=200", "--experiment-name", "test-study")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = client.search_runs(experiments, run_view_type=ViewType.ALL)
    assert sorted((r.info.run_name, r.info.experiment_id) for r in runs) == [
        ("dropout-s0", "0"), ("plain-s0", exp.experiment_id)]


def test_mlflow_run_unknown_variant_lists_the_known_ones(project):
    proc = _mlflow_run(project, "-P", "variant=nope")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "error: unknown variant 'nope'; known variants: bn_all, bn_dropout, bn_hidden, dropout, plain" in out
    assert "Traceback" not in out  # a one-line error, not a crash
    assert _unfinished(project[1]) == []
