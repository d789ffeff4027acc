"""Operations, part two: store faults in one line, a tracking server restarted or lost mid-training,
and a study shared between two clones through a tracking server and a DVC remote.

With the real thing (no mocks): a truncated, foreign or newer-schema ``mlflow.db``, a read-only store
directory, a store locked by another process, an artifact location that cannot be written (a local
folder, or one behind a tracking server), a disk that fills up while a training logs, a server
stopped for 20 s and one lost for longer than MLflow's retries. Part one is ``test_operations.py``.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import VENV_BIN, make_project_copy, subprocess_env, tiny_params
from pipeline.core import metric_names as M
from reliability_helpers import no_default_store  # noqa: F401  (an autouse fixture: every test here)
from reliability_helpers import (LONG, SMALL, all_runs, Proc, free_port, mlflow_server, one_line_error,
                                 prepared_project, run, sigint_reaches_children, stop_group, train_cmd, wait_http)

pytestmark = pytest.mark.slow
sigint_reaches_children()

PYTHON = str(VENV_BIN / "python")






# --------------------------------------------------------------------------- 3. store faults


def test_a_truncated_store_is_one_line_before_training(tmp_path):
    project, env = prepared_project(tmp_path, tiny_params(**SMALL))
    first = run(train_cmd("plain"), project, env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    db = tmp_path / "store" / "mlflow.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])  # a disk that filled up, a copy cut short
    proc = run(train_cmd("plain", "--record", "results/plain-s0"), project, env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert error.startswith(f"error: MLflow store {db} is damaged (it is truncated: ") and "backup" in error, error
    assert "epoch" not in proc.stdout and not (project / "results" / "plain-s0").exists()

    db.write_bytes(b"<html>not a database</html>\n" * 10)
    proc = run(train_cmd("plain"), project, env, timeout=300)
    assert proc.returncode == 2 and "is damaged (it is not an SQLite database)" in one_line_error(proc.stderr)

    db.unlink()  # a store written by a newer MLflow: a schema revision this one does not know
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    proc = run(train_cmd("plain"), project, env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert error.startswith(f"error: MLflow store {db} was written by a newer MLflow (schema f00dfeedbeef"), error


def test_compare_refuses_a_damaged_store_in_one_error(tmp_path):
    from pipeline.core.errors import UserError
    from pipeline.compare.runs import fetch_runs

    db = tmp_path / "mlflow.db"
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    run_id = client.create_run(client.create_experiment("test-study")).info.run_id
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    records = {("plain", 0): {"run_id": run_id, "experiment_id": "1"}}
    with pytest.raises(UserError, match=rf"^MLflow store {db} is damaged \(it is truncated: "):
        fetch_runs(records, f"sqlite:///{db}")


def can_mount_read_only() -> bool:
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.parametrize("store_exists", [True, False])
def test_a_read_only_store_directory_is_one_line_before_training(tmp_path, store_exists):
    """The store's directory mounted read-only (a read-only volume; root ignores file modes, so the
    test mounts it read-only in a mount namespace of its own, ``unshare -rm``)."""
    if not can_mount_read_only():
        pytest.skip("`unshare -rm` is not permitted here: cannot mount a read-only directory")
    project, env = prepared_project(tmp_path, tiny_params(**SMALL))
    store = tmp_path / "store"
    if store_exists:
        first = run(train_cmd("plain"), project, env, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        before = sorted(r.info.run_id for r in all_runs(mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])))
    script = f'mount --bind -o ro "{store}" "{store}" && exec "$@"'
    proc = run(["unshare", "-rm", "sh", "-c", script, "sh", *train_cmd("plain", "--record", "results/plain-s0")],
               project, env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert error.startswith(f"error: MLflow store {store / 'mlflow.db'}: its directory {store} cannot be written "
                            "(Read-only file system)"), error
    assert "epoch" not in proc.stdout and not (project / "results" / "plain-s0").exists()
    if store_exists:
        after = sorted(r.info.run_id for r in all_runs(mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])))
        assert after == before


def test_an_artifact_location_that_cannot_be_written_is_one_line_before_training(tmp_path):
    project, env = prepared_project(tmp_path, tiny_params(**SMALL))
    (tmp_path / "store" / "mlruns").write_text("a file where the artifact folder belongs\n")
    proc = run(train_cmd("plain"), project, env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert error.startswith(f"error: MLflow artifact location {tmp_path / 'store' / 'mlruns'} cannot be written"), error
    assert "epoch" not in proc.stdout
    assert all_runs(mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])) == []


def test_an_artifact_store_the_server_cannot_write_is_one_line_before_training(tmp_path):
    """A tracking server whose --artifacts-destination is a file: the server answers, but cannot store an
    artifact. Found by a probe file before training (MLflow's retries off for it), not after about five
    minutes of retries at the training's first artifact."""
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "artifacts").write_text("a file where the server's artifact folder belongs\n")
    with mlflow_server(tmp_path / "server", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}") as url:
        project, env = prepared_project(tmp_path, tiny_params(**SMALL), MLFLOW_TRACKING_URI=url)
        env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)  # MLflow's defaults: the probe must not wait them out
        started = time.monotonic()
        proc = run(train_cmd("plain", "--record", "results/plain-s0"), project, env, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert time.monotonic() - started < 120
        error = one_line_error(proc.stderr)
        assert error.startswith("error: MLflow artifact location mlflow-artifacts:/") and \
            "cannot be written through the tracking server" in error and "--artifacts-destination" in error, error
        assert "epoch" not in proc.stdout and not (project / "results" / "plain-s0").exists()
        assert all_runs(mlflow.MlflowClient(url)) == []


def test_a_disk_that_fills_up_while_logging_is_one_line_and_the_run_ends_failed(tmp_path):
    """The artifact folder on a 1 MiB tmpfs (mounted in a mount namespace of the training's own,
    ``unshare -rm``): the model does not fit. One line naming the file, exit 2, the run FAILED, no record;
    the same training with space again finishes."""
    if not can_mount_read_only():
        pytest.skip("`unshare -rm` is not permitted here: cannot mount a small filesystem")
    project, env = prepared_project(tmp_path, tiny_params(**SMALL))
    artifacts = tmp_path / "store" / "mlruns"
    artifacts.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size=1m tmpfs "{artifacts}" && exec "$@"'
    proc = run(["unshare", "-rm", "sh", "-c", script, "sh", *train_cmd("plain", "--record", "results/plain-s0")],
               project, env, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert error.startswith(f"error: the disk filled up while writing {artifacts}/") and \
        "(No space left on device); free space there and rerun" in error, error
    assert "epoch 1/" in proc.stdout  # found while logging, after training
    assert not (project / "results" / "plain-s0").exists()
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert [r.info.status for r in all_runs(client)] == ["FAILED"]
    again = run(train_cmd("plain", "--record", "results/plain-s0"), project, env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(r.info.status for r in all_runs(client)) == ["FAILED", "FINISHED"]


LOCKER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_store_locked_by_another_process_is_one_line(tmp_path):
    from pipeline.core.store_faults import LOCK_WAIT_S

    project, env = prepared_project(tmp_path, tiny_params(**SMALL))
    db = tmp_path / "store" / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()  # the store exists
    locker = Proc([PYTHON, "-c", LOCKER, str(db), str(LOCK_WAIT_S + 120)], project, env, tmp_path / "logs", "locker")
    try:
        locker.wait_for("locked", 30)
        proc = run(train_cmd("plain"), project, env, timeout=300)
    finally:
        locker.kill()
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert error.startswith(f"error: MLflow store {db} is locked by another process (waited {LOCK_WAIT_S:g} s)")
    assert f"fuser {db}" in error and "epoch" not in proc.stdout


# --------------------------------------------------------------------------- 4. a server restarted


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:``port`` over ``folder``'s SQLite store and artifacts (a restart
    finds everything where the first one left it)."""
    cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    log = folder / f"server-{time.time():.0f}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", proc, log, 120)
    return proc


def test_a_training_outlives_its_tracking_server_stopped_for_20_s(tmp_path):
    """The server stopped after the first epoch and started again 20 s later on the same port: MLflow's
    client retries (7 times, 0+4+8+16+... s: about 4 minutes in all by default) carry the training
    through, and it ends FINISHED with every epoch's and every held-out check's metrics."""
    epochs = 8
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    server = start_server(folder, port)
    try:
        url = f"http://127.0.0.1:{port}"
        project, env = prepared_project(tmp_path, tiny_params(epochs=epochs, train_limit=600), MLFLOW_TRACKING_URI=url)
        env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        env.pop("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", None)
        proc = Proc(train_cmd("plain", "--record", "results/plain-s0"), project, env, tmp_path / "logs", "train")
        try:
            proc.wait_for("epoch 1/", 300)
            stop_group(server)
            time.sleep(20)
            server = start_server(folder, port)
            assert proc.wait(600) == 0, proc.stderr[-3000:]
        finally:
            proc.kill()
        record = yaml.safe_load((project / "results" / "plain-s0" / "record.json").read_text())
        client = mlflow.MlflowClient(url)
        assert client.get_run(record["run_id"]).info.status == "FINISHED"
        for key in M.EPOCH.values():
            assert sorted(m.step for m in client.get_metric_history(record["run_id"], key)) == \
                list(range(1, epochs + 1)), key
        checks = client.get_metric_history(record["run_id"], M.CONVERGENCE_ACCURACY)
        steps_per_epoch = -(-600 // tiny_params()["train"]["batch_size"])
        assert len({m.step for m in checks}) == len(checks) and max(m.step for m in checks) == epochs * steps_per_epoch
        assert "predictions.csv" in {a.path for a in client.list_artifacts(record["run_id"])}
    finally:
        stop_group(server)


# --------------------------------------------------------------------------- 5. a study shared


def git(project: Path, env: dict, *args: str) -> None:
    proc = run(["git", *args], project, env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_study_shared_through_a_tracking_server_and_a_dvc_remote(tmp_path):
    """Clone A trains a tiny study against a tracking server, pushes its DVC outputs to a remote and
    commits; clone B (a git clone of A) pulls, finds the pipeline up to date, and regenerates the
    same report from the server without training. Without the server, B's compare says which record
    names a run its store lacks, and what to do."""
    params = tiny_params(**SMALL)
    params["variants"] = {v: params["variants"][v] for v in ("plain", "bn_hidden")}
    remote = tmp_path / "dvc-remote"
    with mlflow_server(tmp_path / "server", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}") as url:
        env = subprocess_env(tmp_path, DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=url)
        a = make_project_copy(tmp_path / "a", params)
        for cmd in (["dvc", "remote", "add", "-d", "team", str(remote)], ["dvc", "repro"], ["dvc", "push"]):
            proc = run(cmd, a, env, timeout=900)
            assert proc.returncode == 0, f"A: {cmd}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        git(a, env, "add", "-A")
        git(a, env, "commit", "-qm", "the study")

        b = tmp_path / "b"
        git(tmp_path, env, "clone", "-q", str(a), str(b))
        pulled = run(["dvc", "pull"], b, env, timeout=300)
        assert pulled.returncode == 0, pulled.stdout[-3000:] + pulled.stderr[-3000:]
        status = run(["dvc", "status"], b, env, timeout=120)
        assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
        repro = run(["dvc", "repro"], b, env, timeout=300)
        assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout
        report_a = (a / "reports" / "comparison.md").read_text()
        (b / "reports" / "comparison.md").unlink()
        again = run(["dvc", "repro", "-f", "-s", "compare"], b, env, timeout=600)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "Running stage 'compare'" in again.stdout and "Running stage 'train@" not in again.stdout
        assert (b / "reports" / "comparison.md").read_text() == report_a
        trainings = [r for r in all_runs(mlflow.MlflowClient(url)) if r.data.tags.get("pipeline.kind") != "comparison"]
        assert len(trainings) == 2  # B trained nothing

    record = yaml.safe_load((b / "results" / "plain-s0" / "record.json").read_text())
    local = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"}
    mlflow.MlflowClient(local["MLFLOW_TRACKING_URI"]).search_experiments()  # a store, but not the study's
    proc = run([PYTHON, "-m", "pipeline.compare"], b, local, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert f"run {record['run_id']} (" in error and "results/" in error and "record.json" in error, error
    assert "MLFLOW_TRACKING_URI" in error and "dvc repro -f train@" in error, error


def test_a_server_lost_for_longer_than_the_retries_is_one_line_and_the_rerun_closes_the_run(tmp_path):
    """With the retries cut to one (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=1``), a server stopped mid-training
    outlasts them: the training stops with one line (exit 2), no record; its run stays RUNNING on the
    server, which could not be told, and the same training run again once the server is back closes it
    KILLED and finishes: one FINISHED run, none RUNNING."""
    folder = tmp_path / "server"
    folder.mkdir()
    port = free_port()
    server = start_server(folder, port)
    url = f"http://127.0.0.1:{port}"
    try:
        project, env = prepared_project(tmp_path, tiny_params(**LONG), MLFLOW_TRACKING_URI=url)
        short = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
        proc = Proc(train_cmd("plain", "--record", "results/plain-s0"), project, short, tmp_path / "logs", "lost")
        try:
            proc.wait_for("epoch 1/", 300)
            stop_group(server)
            code = proc.wait(300)
        finally:
            proc.kill()
        assert code == 2, proc.stderr[-3000:]
        error = one_line_error(proc.stderr)
        assert error.startswith(f"error: lost the MLflow tracking server {url} for longer than MLflow's retries"), error
        assert not (project / "results" / "plain-s0").exists()
        lost = proc.wait_for("training plain-s0", 1).rsplit("run ", 1)[1].strip()

        server = start_server(folder, port)
        client = mlflow.MlflowClient(url)
        assert client.get_run(lost).info.status == "RUNNING"
        again = run(train_cmd("plain", "--record", "results/plain-s0", "--epochs", "1"), project, env, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"closed run {lost} (plain-s0) as KILLED" in again.stdout
        assert sorted(r.info.status for r in all_runs(client)) == ["FINISHED", "KILLED"]
    finally:
        stop_group(server)
