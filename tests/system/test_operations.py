"""Operations, part one: trainings that start at the same moment, and runs whose process is gone.

With the real thing (no mocks): shared writes at one instant into a fresh store (SQLite and a loopback
``mlflow server``), real trainings started together, a training killed with SIGKILL and run again,
``python -m pipeline.core.tracking stale`` judging runs by their process, and an early SIGTERM under
``mlflow run``. Part two (store faults, a server restarted or lost, a study shared between clones) is
``test_store_faults.py``; the two files run on different workers.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import VENV_BIN, make_project_copy, subprocess_env, tiny_params
from pipeline.core import run_guard
from reliability_helpers import no_default_store  # noqa: F401  (an autouse fixture: every test here)
from reliability_helpers import (LONG, SMALL, all_runs, Proc, mlflow_server, prepared_project, run,
                                 sigint_reaches_children, sqlite_integrity, train_cmd)

pytestmark = pytest.mark.slow
sigint_reaches_children()

PYTHON = str(VENV_BIN / "python")






# --------------------------------------------------------------------------- 1. trainings at once

# One "training" reduced to its shared writes, through the pipeline's own functions: the experiment,
# a dataset new to it, the registered model, a version and an alias, all started at the same instant.
RACER = r"""
import sys, time
import numpy as np
import mlflow
from pipeline.core import store
from pipeline.core import tracking

experiment, name, round_, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
mlflow.set_tracking_uri(store.tracking_uri())
x = np.full((8, 28, 28, 1), round_, dtype="float32")  # a new dataset digest every round
dataset = mlflow.data.from_numpy(x, targets=np.arange(8, dtype="uint8"), name="mnist-train")
time.sleep(max(0.0, start_at - time.time()))
experiment_id = tracking.prepare_experiment(experiment)
with tracking.mlflow_run(experiment_id, name, {}) as run:
    tracking.log_datasets({"train": (dataset, "training")})
    model = mlflow.initialize_logged_model(name=f"model-{name}")
    tracking.register_model(model.model_id, f"{experiment}-model", alias=name, tags={})
print("ok", run.info.run_id, flush=True)
"""


def race(project: Path, env: dict, rounds: int, n: int, tmp: Path) -> list[str]:
    """``rounds`` times, ``n`` processes doing a training's shared writes at one instant; their failures."""
    failures = []
    for r in range(rounds):
        start_at = time.time() + 12 + n  # every process has imported MLflow and waits by then
        procs = [Proc([PYTHON, "-c", RACER, f"race-{r}", f"t{i}", str(r), str(start_at)], project, env,
                      tmp / "logs", f"race-{r}-{i}") for i in range(n)]
        try:
            codes = [p.wait(180) for p in procs]
        finally:
            for p in procs:
                p.kill()
        failures += [f"round {r} t{i}: {p.stderr[-1500:]}" for i, (p, c) in enumerate(zip(procs, codes)) if c != 0]
    return failures


def check_race_store(client: mlflow.MlflowClient, rounds: int, n: int) -> None:
    for r in range(rounds):
        exp = client.get_experiment_by_name(f"race-{r}")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        assert sorted(run.info.status for run in runs) == ["FINISHED"] * n
        assert sorted(int(v.version) for v in client.search_model_versions(f"name='race-{r}-model'")) == \
            list(range(1, n + 1))
        assert sorted(client.get_registered_model(f"race-{r}-model").aliases) == [f"t{i}" for i in range(n)]
        for one in runs:
            assert [d.dataset.name for d in one.inputs.dataset_inputs] == ["mnist-train"]


def test_shared_writes_at_the_same_instant_into_a_fresh_sqlite_store(tmp_path):
    """Six processes create the experiment, log one new dataset and register versions of one new
    model at the same instant, two rounds: all FINISHED, every version and alias there. (A sweep once
    lost a dataset insert this way, UNIQUE constraint failed: datasets...; the race is rare on SQLite:
    240 synchronized attempts with the old code did not reproduce it, so this guards the fix.)"""
    rounds, n = 2, 6
    project = make_project_copy(tmp_path / "project", tiny_params())
    env = subprocess_env(tmp_path)
    assert race(project, env, rounds, n, tmp_path) == []
    db = tmp_path / "store" / "mlflow.db"
    assert sqlite_integrity(db) == "ok"
    check_race_store(mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]), rounds, n)


def test_shared_writes_at_the_same_instant_through_a_server(tmp_path):
    """The same through a loopback ``mlflow server`` (fresh SQLite backend): a training that loses
    the race to create the experiment finds the other's."""
    rounds, n = 2, 6
    project = make_project_copy(tmp_path / "project", tiny_params())
    with mlflow_server(tmp_path / "server", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}") as url:
        env = subprocess_env(tmp_path, MLFLOW_TRACKING_URI=url)
        assert race(project, env, rounds, n, tmp_path) == []
        check_race_store(mlflow.MlflowClient(url), rounds, n)


# --------------------------------------------------------------------------- 2. no run left RUNNING


def dead_process_tags() -> dict[str, str]:
    """The process tags of a real process that has exited."""
    proc = subprocess.Popen(["sleep", "0.5"])
    tags = run_guard.process_tags(proc.pid)
    proc.wait()
    return tags


def test_stale_lists_and_closes_only_runs_whose_process_is_gone(tmp_path):
    project = make_project_copy(tmp_path / "project", tiny_params())
    env = subprocess_env(tmp_path)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment_id = client.create_experiment("test-study")
    tags = {"dead": dead_process_tags(), "alive": run_guard.process_tags(),  # this test's own process
            "elsewhere": {**dead_process_tags(), run_guard.TAG_HOST: "some-other-host"}, "untagged": {}}
    ids = {name: client.create_run(experiment_id, run_name=name, tags=t).info.run_id for name, t in tags.items()}

    listed = run([PYTHON, "-m", "pipeline.core.tracking", "stale"], project, env, timeout=120)
    assert listed.returncode == 0, listed.stderr[-3000:]
    lines = {line.split(" (")[0].split()[-1]: line for line in listed.stdout.splitlines()}
    assert lines[ids["dead"]].startswith("stale ") and "is gone" in lines[ids["dead"]]
    assert lines[ids["alive"]].startswith("running ") and "is alive" in lines[ids["alive"]]
    assert "cannot judge, its process ran on some-other-host; run this command there" in lines[ids["elsewhere"]]
    assert "cannot judge, it has no process tags" in lines[ids["untagged"]]
    assert all(client.get_run(i).info.status == "RUNNING" for i in ids.values())

    closed = run([PYTHON, "-m", "pipeline.core.tracking", "stale", "--close"], project, env, timeout=120)
    assert closed.returncode == 0, closed.stderr[-3000:]
    assert f"closed {ids['dead']} (dead) as KILLED" in closed.stdout
    statuses = {name: client.get_run(i).info.status for name, i in ids.items()}
    assert statuses == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING"}
    assert "is gone" in client.get_run(ids["dead"]).data.tags[run_guard.TAG_CLOSED_BY]


def test_a_training_killed_with_sigkill_is_closed_by_the_next_one(tmp_path):
    """``kill -9`` (the OOM killer, a power cut) leaves the run RUNNING; the next training of the
    same name closes it KILLED before it starts, and finishes its own: one FINISHED run, none RUNNING."""
    project, env = prepared_project(tmp_path, tiny_params(**LONG))
    proc = Proc(train_cmd("plain", "--record", "results/plain-s0"), project, env, tmp_path / "logs", "killed")
    try:
        proc.wait_for("epoch 1/", 300)
        proc.signal_group(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proc.kill()
    killed = proc.wait_for("training plain-s0", 1).rsplit("run ", 1)[1].strip()
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.get_run(killed).info.status == "RUNNING"  # what SIGKILL leaves behind
    tags = client.get_run(killed).data.tags
    assert tags[run_guard.TAG_PID] == str(proc.popen.pid) and tags[run_guard.TAG_HOST]

    again = run(train_cmd("plain", "--record", "results/plain-s0", "--epochs", "1"), project, env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"closed run {killed} (plain-s0) as KILLED: process {proc.popen.pid} on" in again.stdout
    runs = all_runs(client)
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    assert {r.info.run_name for r in runs} == {"plain-s0"}
    record = yaml.safe_load((project / "results" / "plain-s0" / "record.json").read_text())
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    assert "is gone" in client.get_run(killed).data.tags[run_guard.TAG_CLOSED_BY]


def entry_point_of(launcher: Proc, timeout: float):
    """The ``python -m pipeline.train`` process ``mlflow run`` started, once it is importing TensorFlow
    (its signal handlers are installed by then, and the training has not taken over the run yet)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.popen.pid).children(recursive=True):
            try:
                if "pipeline.train" in " ".join(child.cmdline()) and "tensorflow" in \
                        Path(f"/proc/{child.pid}/maps").read_text():
                    return child
            except (psutil.Error, OSError):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no training process importing TensorFlow within {timeout} s\n{launcher.stderr[-3000:]}")


def test_early_sigterm_under_mlflow_run_ends_the_launchers_run_killed(tmp_path):
    """SIGTERM to ``mlflow run``'s process group after the launcher created its run, before the
    training took it over: the launcher dies at once, the entry point ends the run KILLED."""
    project, env = prepared_project(tmp_path, tiny_params(**SMALL))
    cmd = [str(VENV_BIN / "mlflow"), "run", ".", "-P", "variant=plain", "--env-manager", "local",
           "--experiment-name", "test-study"]
    launcher = Proc(cmd, project, env, tmp_path / "logs", "mlflow-run")
    try:
        entry = entry_point_of(launcher, 180)
        client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
        runs = all_runs(client)
        assert [r.info.status for r in runs] == ["RUNNING"]
        launcher.signal_group(signal.SIGTERM)
        entry.wait(60)  # not our child: its exit status is the launcher's to read, and the launcher is gone
        launcher.wait(30)
    finally:
        launcher.kill()
    assert "interrupted" in launcher.stderr, launcher.stderr[-3000:]
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"
