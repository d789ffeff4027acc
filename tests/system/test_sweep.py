"""``python -m pipeline.sweep`` against real Ray clusters (two nodes on loopback, started here),
real DVC project copies and real MLflow stores: faults end with exactly one FINISHED run and
one committed record per training, never a RUNNING run or a half-committed stage. The
learning-rate grid goes through the same sweep, then ``dvc repro`` reports it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import ray
import yaml
from conftest import VENV_BIN, make_project_copy, subprocess_env, tiny_params
from mlflow.entities import ViewType
from ray.cluster_utils import Cluster

from pipeline.core import metric_names

pytestmark = pytest.mark.slow

METRICS = {*metric_names.EPOCH.values(), *metric_names.TIMING.values()}  # per-epoch curves, timing


def _project(tmp_path: Path, variants: tuple[str, ...], seeds: list[int], epochs: int = 1, **env
             ) -> tuple[Path, dict]:
    params = tiny_params(train_limit=200, test_limit=100, epochs=epochs)
    params["variants"] = {v: params["variants"][v] for v in variants}
    params["seeds"] = seeds
    params["diagnostics"]["enabled"] = False
    return make_project_copy(tmp_path / "project", params), subprocess_env(tmp_path, **env)


@contextmanager
def _cluster(*extra_nodes: dict, head_cpus: int = 1):
    """A head and worker nodes on this machine, started by this process (which does not join
    as a driver). All take the machine's own IP: forcing 127.0.0.1 leaves a driver looking for
    the GCS at the machine's IP."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(**{"num_cpus": 1, **n}) for n in extra_nodes]
        cluster.wait_for_nodes()
        yield cluster, nodes
    finally:
        cluster.shutdown()
        ray.shutdown()


def _sweep(project: Path, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.sweep", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _start_sweep(project: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.sweep", *args], cwd=project, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _runs(env: dict) -> list:
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("test-study")
    return [] if exp is None else client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)


def _wait_for_runs(env: dict, ok, timeout: float = 180) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = [r for r in _runs(env) if r.info.status == "RUNNING"]
        except Exception:  # noqa: BLE001  the store may not exist yet
            runs = []
        if ok(runs):
            return runs
        time.sleep(0.5)
    raise AssertionError(f"no RUNNING runs as expected within {timeout} s")


def _committed(project: Path) -> set[str]:
    lock = project / "dvc.lock"
    stages = yaml.safe_load(lock.read_text())["stages"] if lock.exists() else {}
    return {name for name in stages if name.startswith("train@")}


def _stale_train_stages(project: Path, env: dict) -> set[str]:
    out = subprocess.run([str(VENV_BIN / "dvc"), "status", "--json"], cwd=project, env=env, capture_output=True,
                         text=True, check=True).stdout
    return {name for name in json.loads(out) if name.startswith("train@")}


def _by_status(runs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.info.status, []).append(r.info.run_name)
    return {k: sorted(v) for k, v in out.items()}


def test_node_dies_mid_training_retried_on_the_other_node(tmp_path):
    # 4 epochs: a run stays open long enough to be caught RUNNING on the node about to die.
    project, env = _project(tmp_path, ("plain",), [0, 1], epochs=4)
    with _cluster({}) as (cluster, (worker,)):
        proc = _start_sweep(project, env, "--address", cluster.address)
        running = _wait_for_runs(env, lambda rs: any(r.data.tags.get("ray.node_id") == worker.node_id for r in rs))
        victim = next(r for r in running if r.data.tags["ray.node_id"] == worker.node_id).info.run_name
        cluster.remove_node(worker, allow_graceful=False)
        out, err = proc.communicate(timeout=420)
    assert proc.returncode == 0, out + err
    assert out.count("done plain-s") == 2 and "2 of 2 trainings done" in out, out

    runs = _runs(env)
    status = _by_status(runs)
    assert status["FINISHED"] == ["plain-s0", "plain-s1"]
    assert status["KILLED"] == [victim]            # the orphan of the dead node, closed by the driver
    assert "RUNNING" not in status
    retried = next(r for r in runs if r.info.run_name == victim and r.info.status == "FINISHED")
    assert retried.data.tags["ray.node_id"] != worker.node_id
    for run in runs:
        if run.info.status == "FINISHED":
            assert run.data.tags["dvc_stage"] == f"train@plain-{run.data.tags['seed']}"
            assert run.data.tags["ray.node"] and run.data.tags["sweep.cpus"] == "1"
            assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git_commit"]
            assert METRICS <= set(run.data.metrics)
    for seed in (0, 1):
        record = json.loads((project / "results" / f"plain-s{seed}" / "record.json").read_text())
        finished = next(r for r in runs if r.info.run_name == f"plain-s{seed}" and r.info.status == "FINISHED")
        assert record["run_id"] == finished.info.run_id
    assert _committed(project) == {"train@plain-0", "train@plain-1"}
    assert _stale_train_stages(project, env) == set()   # `dvc repro` retrains nothing
    again = _sweep(project, env, "--dry-run")
    assert "0 of 2 trainings missing or stale" in again.stdout, again.stdout + again.stderr


def test_training_that_raises_is_reported_and_not_committed(tmp_path):
    project, env = _project(tmp_path, ("plain",), [0, 1])
    subprocess.run([str(VENV_BIN / "dvc"), "repro", "normalize"], cwd=project, env=env, check=True,
                   capture_output=True)
    bad = tmp_path / "bad-prepared"
    bad.mkdir()
    for f in (project / "data" / "prepared").iterdir():
        bad.joinpath(f.name).write_bytes(f.read_bytes())
    blob = bytearray(bad.joinpath("x_train.npy").read_bytes())
    blob[-1] ^= 0xFF  # one flipped byte: the node's copy of the data is bad
    bad.joinpath("x_train.npy").write_bytes(bytes(blob))

    with _cluster({"env_vars": {"LENET_PREPARED": str(bad)}}) as (cluster, _):
        proc = _sweep(project, env, "--address", cluster.address)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith("failed plain-s")]
    assert len(failed) == 1, proc.stderr
    assert "differs from the driver's: train digest" in failed[0] and str(bad) in failed[0]
    assert "Traceback" not in proc.stderr
    ok_seed = next(s for s in (0, 1) if f"plain-s{s}" not in failed[0])
    assert "1 of 2 trainings done" in proc.stdout and "1 failed: train@plain-" in proc.stdout
    assert _committed(project) == {f"train@plain-{ok_seed}"}
    assert not (project / "results" / f"plain-s{1 - ok_seed}").exists()
    assert _by_status(_runs(env)) == {"FINISHED": [f"plain-s{ok_seed}"]}


def test_interrupted_driver_stops_workers_and_commits_nothing_half(tmp_path):
    project, env = _project(tmp_path, ("plain",), [0, 1, 2])
    with _cluster({}) as (cluster, _):
        proc = _start_sweep(project, env, "--address", cluster.address)
        # The first record committed, then a training of the third seed running: interrupt.
        while "done plain-s" not in (line := proc.stdout.readline()):
            assert line, proc.stderr.read()
        _wait_for_runs(env, lambda rs: len(rs) >= 1)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=120)
        stopped_after = time.monotonic() - sent
    assert proc.returncode == 130, out + err
    assert "interrupted" in err and stopped_after < 60, (stopped_after, err)
    status = _by_status(_runs(env))
    assert "RUNNING" not in status, status
    committed = _committed(project)
    assert 1 <= len(committed) <= 2, committed
    # Every record on disk is a committed one, and every committed one is up to date.
    on_disk = {f"train@plain-{p.name.split('-s')[1]}" for p in (project / "results").glob("plain-s*")}
    assert on_disk == committed
    assert _stale_train_stages(project, env) == {"train@plain-0", "train@plain-1", "train@plain-2"} - committed
    assert len(status["FINISHED"]) == len(committed)
    again = _sweep(project, env, "--dry-run")
    missing = sorted({"train@plain-0", "train@plain-1", "train@plain-2"} - committed)
    assert f"{len(missing)} of 3 trainings missing or stale: {', '.join(missing)}" in again.stdout, again.stdout


def test_code_the_trainings_depend_on_changed_mid_sweep_withholds_the_record_and_marks_the_run(tmp_path):
    """A training that finishes after its code changed is not committed (DVC would record it under the new
    code); its run is tagged part=uncommitted, out of the study's view. A change to code no training
    depends on (the report's) does not stop a commit."""
    project, env = _project(tmp_path, ("plain",), [0], epochs=3)

    def sweep_while_editing(path: Path) -> tuple[int, str, str]:
        proc = _start_sweep(project, env, "--local-cpus", "1")
        try:
            _wait_for_runs(env, lambda rs: len(rs) == 1)
            path.write_text(path.read_text() + "\n# edited while a training ran\n")
            out, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
        return proc.returncode, out, err

    code, out, err = sweep_while_editing(project / "pipeline" / "train" / "stage.py")
    assert code == 1, out + err
    run = next(r for r in _runs(env) if r.info.run_name == "plain-s0")
    assert f"not committed train@plain-0: code, params or data changed during the sweep; its run {run.info.run_id} " \
           "is tagged part=uncommitted" in err
    assert run.info.status == "FINISHED" and run.data.tags["part"] == "uncommitted"
    assert _committed(project) == set() and not (project / "results" / "plain-s0" / "record.json").exists()

    code, out, err = sweep_while_editing(project / "pipeline" / "compare" / "report.py")
    assert code == 0, out + err
    assert _committed(project) == {"train@plain-0"} and _stale_train_stages(project, env) == set()
    assert sorted(r.data.tags["part"] for r in _runs(env)) == ["study", "uncommitted"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _mlflow_server(tmp: Path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(tmp / "server.log", "w") as log:
        proc = subprocess.Popen([str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--backend-store-uri", f"sqlite:///{tmp}/server.db", "--serve-artifacts",
                                 "--artifacts-destination", str(tmp / "artifacts"), "--workers", "1"],
                                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_eight_concurrent_trainings_into_one_tracking_server(tmp_path):
    (tmp_path / "server").mkdir()
    with _mlflow_server(tmp_path / "server") as url:
        project, env = _project(tmp_path, ("plain", "dropout"), [0, 1, 2, 3], MLFLOW_TRACKING_URI=url)
        with _cluster({"num_cpus": 4}, head_cpus=4) as (cluster, _):
            proc = _sweep(project, env, "--address", cluster.address, timeout=600)  # 8 trainings on 2 cores
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "8 of 8 trainings done" in proc.stdout, proc.stdout
        runs = _runs(env)
        client = mlflow.MlflowClient(url)
        assert _by_status(runs) == {"FINISHED": sorted(f"{v}-s{s}" for v in ("plain", "dropout") for s in range(4))}
        for run in runs:
            assert METRICS <= set(run.data.metrics), run.info.run_name
            assert len(client.get_metric_history(run.info.run_id, metric_names.TEST_ACCURACY)) == 1
            assert "predictions.csv" in {a.path for a in client.list_artifacts(run.info.run_id)}
            (output,) = run.outputs.model_outputs
            assert client.get_logged_model(output.model_id).name == f"lenet5-{run.info.run_name}"
        # They ran at once: the most runs open at one moment.
        events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
        open_now = peak = 0
        for _, step in events:
            open_now += step
            peak = max(peak, open_now)
        assert peak >= 4, peak
    assert len(_committed(project)) == 8 and _stale_train_stages(project, env) == set()


def test_down_tracking_server_fails_in_seconds_before_ray(tmp_path):
    project, env = _project(tmp_path, ("plain",), [0], MLFLOW_TRACKING_URI=f"http://127.0.0.1:{_free_port()}")
    start = time.monotonic()
    proc = _sweep(project, env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - start < 30
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert "is unreachable" in proc.stderr and "sweep" not in proc.stdout
    assert not (project / "data").exists()  # nothing ran, not even the data stages


def test_local_store_with_a_cluster_on_two_machines_says_start_a_server(tmp_path):
    project, env = _project(tmp_path, ("plain",), [0])
    # A second node with another IP (loopback 127.0.0.2): to Ray, another machine.
    with _cluster({"node_ip_address": "127.0.0.2"}) as (cluster, _):
        proc = _sweep(project, env, "--address", cluster.address, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: the Ray cluster spans 2 machines"), proc.stderr
    assert "mlflow server --host 0.0.0.0" in lines[0] and "MLFLOW_TRACKING_URI=http://" in lines[0]
    assert _runs(env) == [] and _committed(project) == set()


def test_mlflow_run_against_a_stopped_server_fails_fast_with_the_documented_setting(tmp_path):
    """MLflow's launcher creates its run (retrying for minutes by default) before our code
    starts; with MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 it gives up at once (docs/cluster.md)."""
    project, env = _project(tmp_path, ("plain",), [0], MLFLOW_TRACKING_URI=f"http://127.0.0.1:{_free_port()}",
                            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    start = time.monotonic()
    proc = subprocess.run([str(VENV_BIN / "mlflow"), "run", ".", "-P", "variant=plain", "--env-manager", "local"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert time.monotonic() - start < 45, time.monotonic() - start
    assert "Connection refused" in proc.stderr or "ConnectionError" in proc.stderr, proc.stderr[-2000:]


def test_grid_through_the_ray_sweep_then_dvc_repro_reports_it(tmp_path):
    """plain at rates 0.05 and 1000 (which diverges), one seed, one confirmation seed: the sweep trains
    the study and the grid, chooses the rate, trains the confirmation at it and commits every stage;
    ``dvc repro`` then only compares, and the report, metrics and summary run show the grid with the
    diverged training."""
    params = tiny_params(train_limit=300, test_limit=200)
    params["variants"] = {"plain": params["variants"]["plain"]}
    params["diagnostics"]["enabled"] = False
    params["convergence"].update({"every_steps": 1, "images": 200})
    params["lr_grid"] = {"learning_rates": [0.05, 1000], "seeds": [0], "validation_images": 100, "epochs": 2}
    params["confirm"] = {"seeds": [3]}
    project = make_project_copy(tmp_path / "project", params)
    env = subprocess_env(tmp_path)

    sweep = subprocess.run([sys.executable, "-m", "pipeline.sweep", "--local-cpus", "2"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=900, check=False)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert "3 of 3 trainings done" in sweep.stdout, sweep.stdout
    assert sweep.stdout.count("(DIVERGED)") == 1 and "done plain-s0-lr1000 (DIVERGED)" in sweep.stdout, sweep.stdout
    # then the choice, and the confirmation on its fresh seed at the chosen rate
    assert "chosen rates: plain 0.05" in sweep.stdout and "done plain-s3-tuned on " in sweep.stdout, sweep.stdout
    assert sweep.stdout.index("3 of 3 trainings done") < sweep.stdout.index("chosen rates") < \
        sweep.stdout.index("1 of 1 trainings done")
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert {s for s in lock if s.startswith(("train@", "lr_grid@", "choose@", "confirm@"))} == {
        "train@plain-0", "lr_grid@plain-0-0.05", "lr_grid@plain-0-1000", "choose@plain", "confirm@plain-3"}
    confirmed = json.loads((project / "results" / "confirm" / "plain-s3" / "record.json").read_text())
    assert confirmed["learning_rate"] == 0.05 and confirmed["part"] == "confirm"

    repro = subprocess.run([str(VENV_BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=600, check=False)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "Running stage 'compare'" in repro.stdout
    assert "Running stage 'train@" not in repro.stdout and "Running stage 'lr_grid@" not in repro.stdout
    assert "Running stage 'confirm@" not in repro.stdout and "Running stage 'choose@" not in repro.stdout

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("test-study")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    record = json.loads((project / "results" / "lr_grid" / "plain-s0-lr1000" / "record.json").read_text())
    diverged = runs["plain-s0-lr1000"]
    assert record["run_id"] == diverged.info.run_id and record["learning_rate"] == 1000
    assert record["diverged_at_step"] == diverged.data.metrics[metric_names.DIVERGED_AT_STEP] >= 1
    dvc_metrics = json.loads((project / "results" / "lr_grid" / "plain-s0-lr1000" / "metrics.json").read_text())
    assert set(dvc_metrics) == {"test_loss", "test_accuracy", "validation_loss", "validation_accuracy",
                                "diverged_at_step"}
    assert set(json.loads((project / "results" / "plain-s0" / "metrics.json").read_text())) == {
        "test_loss", "test_accuracy"}  # the study's records as before
    assert diverged.data.tags[metric_names.TAG_DIVERGED] == "true"
    assert diverged.data.tags[metric_names.TAG_LR_GRID] == "true"
    assert diverged.data.params["train.learning_rate"] == "1000.0"
    assert diverged.data.params["data.n_train"] == "200" and diverged.data.params["data.n_validation"] == "100"
    fine = runs["plain-s0-lr0.05"]
    assert fine.data.tags[metric_names.TAG_DIVERGED] == "false" and fine.info.status == "FINISHED"
    assert fine.data.metrics[metric_names.VALIDATION_ACCURACY] == pytest.approx(
        pd.read_csv(project / "results" / "lr_grid" / "plain-s0-lr0.05" / "history.csv")
        ["validation_accuracy"].iloc[-1])
    study_run = runs["plain-s0"]
    assert study_run.data.tags[metric_names.TAG_DIVERGED] == "false"
    assert metric_names.TAG_LR_GRID not in study_run.data.tags
    # Only the study's models are registered: a grid's would take their aliases.
    assert len(client.search_model_versions("name = 'test-study'")) == 1
    assert list(client.get_registered_model("test-study").aliases) == ["plain-s0"]

    md = (project / "reports" / "comparison.md").read_text()
    section = md[md.index("## Learning-rate sensitivity"):md.index("## Figures")]
    assert "Diverged (training loss NaN or infinite, or an epoch's mean above 4.6" in section
    assert "Validation accuracy after 2 epochs (`lr_grid.epochs`; the study trains 1)" in section
    assert "study's, for 2 epochs instead of 1: the best rates and the ranking at them are for that budget" in section
    assert fine.data.params["train.epochs"] == "2" and study_run.data.params["train.epochs"] == "1"
    assert "the training stopped there): plain-s0-lr1000." in section
    assert "Each at its best rate: plain. The ranking holds. A reversed pair counts only when" in section
    assert re.search(r"\|\s+1000 \|\s+diverged \(1 of 1 seed\) \|", section), section
    assert re.search(r"\|\s+0\.05 \|\s+\*\*0\.\d{4}\*\* \|", section), section  # the best rate, in bold
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["lr_grid"]["plain"]["best_learning_rate"] == 0.05
    assert metrics["lr_grid"]["plain"]["diverged_runs"] == 1
    assert metrics["lr_grid"]["plain"]["test_accuracy_at_best"] == pytest.approx(
        fine.data.metrics[metric_names.TEST_ACCURACY], abs=1e-6)
    assert (project / "reports" / "figures" / "learning_rates.png").stat().st_size > 1000
    summary = client.search_runs([experiment.experiment_id], "tags.`pipeline.kind` = 'comparison'")[0]
    assert summary.data.metrics["lr_grid.plain.best_learning_rate"] == 0.05
    assert summary.data.tags["lr_grid.ranking_holds"] in ("true", "false")
