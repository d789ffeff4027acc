"""Reliability: the pipeline run the way people and machines run it, with real processes.

Signals in the middle of a training (``python -m pipeline.train.stage`` and ``dvc repro``), four
trainings writing one fresh SQLite store at once, real tracking servers (``mlflow server``
on SQLite, on PostgreSQL, with basic auth), a server that is down, broken data files,
invalid params, and a download killed half-way. Nothing is mocked: each test starts the
real commands in a copy of the project on the fixture subset (tests/fixtures/mnist).
"""

from __future__ import annotations

import http.server
import os
import secrets
import shutil
import signal
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.entities import ViewType

from conftest import FIXTURE_MNIST, VENV_BIN, fixture_pins, make_project_copy, subprocess_env, tiny_params
from pipeline.core import metric_names as M
from pipeline.data.idx import payload_sha256
from reliability_helpers import no_default_store  # noqa: F401  (an autouse fixture: every test here)
from reliability_helpers import (LONG, SMALL, all_runs, Proc, ensure_postgres, free_port, leftovers, mlflow_server,
                                 one_line_error, postgres_cluster, prepared_project, run, set_params,
                                 sigint_reaches_children, sqlite_integrity, train_cmd)

pytestmark = pytest.mark.slow
sigint_reaches_children()

EXPERIMENT = "test-study"          # tiny_params() names it
PYTHON = str(VENV_BIN / "python")




def only_variants(params: dict, *names: str) -> dict:
    params["variants"] = {n: params["variants"][n] for n in names}
    return params


def client_for(env: dict) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])




def run_id_of(proc: Proc) -> str:
    line = proc.wait_for("training plain-s0", 5)
    return line.rsplit("run ", 1)[1].strip()


# --------------------------------------------------------------------------- 1. interruption


def test_signal_during_training_ends_the_run_killed_and_writes_nothing(tmp_path):
    """SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler) during fit: exit 130, the MLflow run
    ends KILLED, no record or history for DVC, no temporary file left anywhere."""
    project, env = prepared_project(tmp_path, tiny_params(**LONG))
    procs = {sig: Proc(train_cmd("plain", "--record", f"results/x-{sig.name}"), project, env, tmp_path / "logs",
                       sig.name) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig, proc in procs.items():
            proc.wait_for("epoch 1/", 180)
            proc.popen.send_signal(sig)
        codes = {sig: proc.wait(60) for sig, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    client = client_for(env)
    for sig, proc in procs.items():
        assert codes[sig] == 130, proc.stderr[-3000:]
        assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr
        assert not any(line.startswith("done ") for line in proc.lines), proc.stdout
        run_id = run_id_of(proc)
        assert client.get_run(run_id).info.status == "KILLED", sig.name
        record_dir = project / "results" / f"x-{sig.name}"
        assert not record_dir.exists() or not list(record_dir.iterdir())  # no record file at all
    assert sorted(r.info.status for r in all_runs(client)) == ["KILLED", "KILLED"]
    assert leftovers(project, tmp_path / "tmp") == []


# Runs, and interrupts, pipeline.train's own run context around a tight loop of MLflow calls,
# so that the interrupt lands inside a call on the SQLite store.
INTERRUPTED_LOGGER = r"""
import sys
import mlflow
from pipeline.core import cli
from pipeline.core import tracking
from pipeline.core.tracking import mlflow_run

# Python ignores an exception raised inside a weakref callback or __del__ ("Exception ignored
# in ..."), so now and then the KeyboardInterrupt of a SIGINT is lost. A person would press
# Ctrl-C again; here the loop raises it at its next step, as training does at its next batch.
cli.install_signal_handlers()
experiment_id = tracking.prepare_experiment("test-study")
for n in range(int(sys.argv[1])):
    cli.pending_signals.clear()
    try:
        with mlflow_run(experiment_id, f"r{n}", {}):
            print(f"run {n}.", flush=True)
            step = 0
            while True:
                cli.raise_pending_signal()
                step += 1
                mlflow.log_metrics({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, step=step)
    except (KeyboardInterrupt, Exception) as exc:
        print(f"interrupted {n}: {type(exc).__name__}", flush=True)
"""


def test_interrupt_inside_an_mlflow_call_still_ends_the_run_killed(tmp_path):
    """A signal that lands inside an MLflow call on the SQLite store used to leave a statement
    open, and the store locked by the interrupted process itself: ending the run failed after
    MLflow's 20 s busy timeout and the run stayed RUNNING (about 1 interrupt in 10 here)."""
    import random

    n = 25
    project = make_project_copy(tmp_path / "project", tiny_params())
    env = subprocess_env(tmp_path)
    proc = Proc([PYTHON, "-c", INTERRUPTED_LOGGER, str(n)], project, env, tmp_path / "logs", "logger")
    pause = random.Random(0)
    try:
        for i in range(n):
            proc.wait_for(f"run {i}.", 60)
            time.sleep(pause.uniform(0.05, 0.25))
            proc.popen.send_signal(signal.SIGINT)
            proc.wait_for(f"interrupted {i}:", 15)  # not the 20 s of a busy timeout
        assert proc.wait(30) == 0, proc.stderr[-3000:]
    finally:
        proc.kill()
    runs = all_runs(client_for(env))
    assert len(runs) == n and {r.info.status for r in runs} <= {"KILLED", "FAILED"}
    # Nearly always the interrupt itself; rarely SQLAlchemy turns it into an error of its own (FAILED).
    assert sum(line.endswith(": KeyboardInterrupt") for line in proc.lines) >= n - 3, proc.stdout


def test_interrupted_dvc_repro_commits_nothing_and_the_next_repro_trains_cleanly(tmp_path):
    params = only_variants(tiny_params(epochs=20, train_limit=600), "plain")
    project, env = prepared_project(tmp_path, params)
    repro = Proc(["dvc", "repro", "train@plain-0"], project, env, tmp_path / "logs", "repro")
    try:
        repro.wait_for("epoch 1/", 180)
        repro.signal_group(signal.SIGINT)  # what Ctrl-C in the terminal does
        code = repro.wait(60)
    finally:
        repro.kill()
    assert code != 0, repro.stdout
    assert "interrupted" in repro.stderr  # the training's own clean-up ran
    killed = run_id_of(repro)
    client = client_for(env)
    assert client.get_run(killed).info.status == "KILLED"
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert "train@plain-0" not in lock["stages"]
    results = project / "results"
    # no record: nothing but the tracked note of the grid's folder
    assert [p.relative_to(project).as_posix() for p in results.rglob("*") if p.is_file()] == [
        "results/lr_grid/README.md"]
    assert leftovers(project, tmp_path / "tmp") == []

    again = run(["dvc", "repro"], project, env, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Running stage 'train@plain-0'" in again.stdout
    record = yaml.safe_load((project / "results" / "plain-s0" / "record.json").read_text())
    finished = record["run_id"]
    assert finished != killed and client.get_run(finished).info.status == "FINISHED"
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert {"train@plain-0", "compare"} <= set(lock["stages"])
    report = (project / "reports" / "comparison.md").read_text()
    assert finished in report and killed not in report
    statuses = sorted((r.data.tags.get("pipeline.kind", "training"), r.info.status) for r in all_runs(client))
    assert statuses == [("comparison", "FINISHED"), ("training", "FINISHED"), ("training", "KILLED")]
    assert leftovers(project, tmp_path / "tmp") == []


# --------------------------------------------------------------------------- 2. concurrency


def test_four_parallel_trainings_into_one_fresh_sqlite_store(tmp_path):
    """The store does not exist when four trainings start; the store's file lock (tracking.shared_write)
    lets exactly one create it and the shared datasets, and all four land complete."""
    project, env = prepared_project(tmp_path, tiny_params(epochs=2, **SMALL))
    db = Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    assert not db.exists()
    variants = ["plain", "bn_hidden", "dropout", "bn_all"]
    procs = [Proc(train_cmd(v, "--record", f"results/{v}-s0"), project, env, tmp_path / "logs", v) for v in variants]
    try:
        codes = [p.wait(400) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for v, p, code in zip(variants, procs, codes):
        assert code == 0, f"{v}:\n{p.stderr[-3000:]}"

    assert sqlite_integrity(db) == "ok"
    client = client_for(env)
    assert sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL)) == ["Default", EXPERIMENT]
    runs = {r.info.run_id: r for r in all_runs(client)}
    assert len(runs) == 4
    for v in variants:
        record = yaml.safe_load((project / "results" / f"{v}-s0" / "record.json").read_text())
        run = runs[record["run_id"]]
        assert run.info.status == "FINISHED" and run.info.run_name == f"{v}-s0"
        for key in M.EPOCH.values():
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == [1, 2], (v, key)
        assert run.data.metrics[M.TEST_ACCURACY] == pytest.approx(record["test_accuracy"])
        assert {"predictions.csv", "model_summary.txt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert len(run.inputs.dataset_inputs) == 2  # both logged the same two new datasets at once, both kept


# --------------------------------------------------------------------------- 3. remote tracking


def test_dvc_repro_against_a_tracking_server_logs_everything_there(tmp_path):
    params = only_variants(tiny_params(**SMALL), "plain", "bn_hidden")
    project = make_project_copy(tmp_path / "project", params)
    with mlflow_server(tmp_path / "server", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}") as url:
        env = subprocess_env(tmp_path, DVC_NO_ANALYTICS="1", MLFLOW_TRACKING_URI=url)
        proc = run(["dvc", "repro"], project, env, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        client = mlflow.MlflowClient(url)
        report = (project / "reports" / "comparison.md").read_text()
        for variant in ("plain", "bn_hidden"):
            record = yaml.safe_load((project / "results" / f"{variant}-s0" / "record.json").read_text())
            run_ = client.get_run(record["run_id"])
            assert run_.info.status == "FINISHED"
            assert run_.info.artifact_uri.startswith("mlflow-artifacts:")
            assert run_.data.tags["tracking_store"] == url
            top = {a.path for a in client.list_artifacts(run_.info.run_id)}
            assert {"predictions.csv", "confusion_matrix.csv", "diagnostics"} <= top
            if variant == "bn_hidden":
                assert "bn_weights" in top
                bn = {Path(a.path).name for a in client.list_artifacts(run_.info.run_id, "bn_weights")}
                assert {"conv1.npz", "fc1.npz", "summary.json"} <= bn
            assert record["run_id"] in report
        kinds = sorted(r.data.tags.get("pipeline.kind", "training") for r in all_runs(client))
        assert kinds == ["comparison", "training", "training"]
    # Everything went to the server: artifacts in its destination, no local store anywhere.
    assert any((tmp_path / "server" / "artifacts").rglob("predictions.csv"))
    assert not (tmp_path / "store" / "mlflow.db").exists()
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()


def test_training_through_a_server_with_a_postgresql_backend(tmp_path):
    # postgresql:// URIs use SQLAlchemy 2.1's default driver, psycopg (3), in the server's Python.
    import psycopg  # noqa: F401  (a test dependency: fail loudly if the environment lacks it)

    bindir = ensure_postgres()
    if bindir is None and os.environ.get("CI") != "true":
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; `apt-get install postgresql` "
                    "(the test installs it itself when CI=true and it runs as root)")
    assert bindir is not None, "CI must have PostgreSQL: `apt-get install postgresql` failed or was not possible"
    with postgres_cluster(bindir) as db_uri:
        with mlflow_server(tmp_path / "server", db_uri) as url:
            project, env = prepared_project(tmp_path, tiny_params(**SMALL), MLFLOW_TRACKING_URI=url)
            proc = run(train_cmd("bn_hidden", "--record", "results/bn_hidden-s0"), project, env, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            record = yaml.safe_load((project / "results" / "bn_hidden-s0" / "record.json").read_text())
            run_ = mlflow.MlflowClient(url).get_run(record["run_id"])
            assert run_.info.status == "FINISHED"
            assert "bn_weights" in {a.path for a in mlflow.MlflowClient(url).list_artifacts(record["run_id"])}
        # The run is in PostgreSQL itself, not in some local fallback.
        direct = mlflow.MlflowClient(db_uri)
        assert direct.get_run(record["run_id"]).info.status == "FINISHED"
        assert [m.step for m in direct.get_metric_history(record["run_id"], M.TEST_ACCURACY)] == [1]
    assert not (tmp_path / "store" / "mlflow.db").exists()


# --------------------------------------------------------------------------- 4. server down


def test_training_against_a_server_that_is_down_fails_fast(tmp_path):
    project = make_project_copy(tmp_path / "project", tiny_params())
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = subprocess_env(tmp_path, MLFLOW_TRACKING_URI=url)
    start = time.monotonic()
    proc = run(train_cmd("plain"), project, env, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert elapsed < 15, elapsed
    error = one_line_error(proc.stderr)
    assert url in error and "unreachable" in error
    assert "epoch" not in proc.stdout
    assert not (project / "data").exists()  # failed before preparing data, let alone training


class _SlowServer(http.server.ThreadingHTTPServer):
    """Answers the pre-flight probe as MLflow would, after ``delay`` seconds: a busy tracking server."""

    daemon_threads, block_on_close = True, False

    def __init__(self, delay: float):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                time.sleep(delay)
                body = b'{"experiment": {"experiment_id": "0", "name": "Default"}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_a_busy_server_gets_as_long_as_mlflow_gives_it(monkeypatch):
    """Slower than the 5 s connect timeout (eight trainings logging at once did that) is not "down"."""
    from pipeline.core import store

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    server = _SlowServer(delay=store.CONNECT_TIMEOUT_S + 1)
    try:
        store.check_server(server.url)
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_never_answers_fails_after_mlflows_request_timeout(monkeypatch):
    from pipeline.core import store
    from pipeline.core.errors import UserError

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    server = _SlowServer(delay=60)
    start = time.monotonic()
    try:
        with pytest.raises(UserError, match=r"accepted the connection but did not answer within 2 s "
                                            r"\(MLFLOW_HTTP_REQUEST_TIMEOUT\)"):
            store.check_server(server.url)
    finally:
        server.shutdown()
        server.server_close()
    assert time.monotonic() - start < 10


# --------------------------------------------------------------------------- 5. authentication


AUTH_USER, AUTH_PASSWORD = "admin", "Adm1n-5ecret-7f3"


def test_basic_auth_server_credentials(tmp_path, monkeypatch):
    import flask_wtf  # noqa: F401  (MLflow's basic-auth app needs it; a test dependency)
    auth_dir = tmp_path / "auth"
    auth_dir.mkdir()
    ini = auth_dir / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{auth_dir / 'auth.db'}\n"
                   f"admin_username = {AUTH_USER}\nadmin_password = {AUTH_PASSWORD}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    # The auth app refuses to start without a fixed key for its CSRF tokens.
    server_env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    params = only_variants(tiny_params(**SMALL), "plain")
    with mlflow_server(tmp_path / "server", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
                       app_name="basic-auth", env=server_env) as url:
        project, env = prepared_project(tmp_path, params, MLFLOW_TRACKING_URI=url, MLFLOW_TRACKING_USERNAME=AUTH_USER)

        wrong = {**env, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
        start = time.monotonic()
        proc = run(train_cmd("plain", "--record", "results/plain-s0"), project, wrong, timeout=60)
        assert time.monotonic() - start < 15
        assert proc.returncode == 2, proc.stderr[-3000:]
        error = one_line_error(proc.stderr)
        assert url in error and "credentials" in error and "MLFLOW_TRACKING_PASSWORD" in error
        assert "not-the-password" not in proc.stdout + proc.stderr
        assert "epoch" not in proc.stdout

        right = {**env, "MLFLOW_TRACKING_PASSWORD": AUTH_PASSWORD}
        for cmd in (train_cmd("plain", "--record", "results/plain-s0"), [PYTHON, "-m", "pipeline.compare"]):
            proc = run(cmd, project, right, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert AUTH_PASSWORD not in proc.stdout + proc.stderr

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", AUTH_USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", AUTH_PASSWORD)
        client = mlflow.MlflowClient(url)
        runs = all_runs(client)
        assert sorted(r.info.run_name for r in runs) == ["comparison", "plain-s0"]
        assert all(r.info.status == "FINISHED" for r in runs)
        logged = tmp_path / "logged"
        for r in runs:
            texts = [f"{k}={v}" for k, v in {**r.data.params, **r.data.tags}.items()]
            assert not [t for t in texts if AUTH_PASSWORD in t], r.info.run_name
            mlflow.artifacts.download_artifacts(run_id=r.info.run_id, dst_path=str(logged / r.info.run_id),
                                                tracking_uri=url)
            for output in r.outputs.model_outputs if r.outputs else []:
                model = client.get_logged_model(output.model_id)
                mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                    dst_path=str(logged / output.model_id), tracking_uri=url)
    files = [p for root in (logged, project / "results", project / "reports") for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "MLmodel" for p in files) and any(p.name == "record.json" for p in files)
    assert [str(p) for p in files if AUTH_PASSWORD.encode() in p.read_bytes()] == []
    # Nor anything the server stored or printed (its run database, its artifacts, its log).
    stored = [p for p in (tmp_path / "server").rglob("*") if p.is_file()]
    assert [str(p) for p in stored if AUTH_PASSWORD.encode() in p.read_bytes()] == []


# --------------------------------------------------------------------------- 6. data


IMAGES = "train-images-idx3-ubyte.gz"


def damaged(kind: str) -> bytes:
    good = (FIXTURE_MNIST / IMAGES).read_bytes()
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "corrupted":  # bytes flipped inside the compressed stream
        mid = len(good) // 2
        return good[:mid] + bytes(b ^ 0xFF for b in good[mid:mid + 64]) + good[mid + 64:]
    if kind == "wrong file":  # a valid IDX file, but the test images under the train images' name
        return (FIXTURE_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()
    if kind == "not gzip":
        return b"<html>404 Not Found</html>\n"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated", "corrupted", "wrong file", "not gzip"])
def test_broken_mirror_file_is_reported_and_leaves_nothing(tmp_path, kind):
    mirror = tmp_path / "mirror"
    shutil.copytree(FIXTURE_MNIST, mirror)
    (mirror / IMAGES).write_bytes(damaged(kind))
    project = make_project_copy(tmp_path / "project", tiny_params())
    env = subprocess_env(tmp_path, MNIST_MIRROR=str(mirror))
    proc = run([PYTHON, "-m", "pipeline.data.download"], project, env, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert IMAGES in error and str(mirror) in error and "tried 1 source(s)" in error
    data = project / "data"
    assert IMAGES not in {p.name for p in (data / "raw").iterdir()}
    assert leftovers(data) == [] and sorted(p.name for p in data.iterdir()) == ["raw"]


def test_broken_file_in_data_raw_is_detected_and_fetched_again(tmp_path):
    project, env = prepared_project(tmp_path, tiny_params())
    raw = project / "data" / "raw"
    (raw / IMAGES).write_bytes(damaged("truncated"))
    proc = run([PYTHON, "-m", "pipeline.data.download"], project, env, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{IMAGES} in {raw} fails verification" in proc.stderr
    assert payload_sha256(raw / IMAGES) == fixture_pins()[IMAGES]

    # With no source to fetch it from again, it is an error naming the file, and the bad copy is gone.
    (raw / IMAGES).write_bytes(damaged("corrupted"))
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    proc = run([PYTHON, "-m", "pipeline.data.download"], project, {**env, "MNIST_MIRROR": str(empty)}, timeout=60)
    assert proc.returncode == 2
    error = one_line_error(proc.stderr)
    assert IMAGES in error and str(empty) in error
    assert not (raw / IMAGES).exists() and leftovers(project / "data") == []


# --------------------------------------------------------------------------- 7. params


@pytest.mark.parametrize("field, value", [
    ("train.epochs", 0),
    ("train.batch_size", -1),
    ("train.learning_rate", 0),
    ("variants.dropout.dropout_hidden", 1.0),
    ("seeds", [-1]),
    ("seeds", [2**32]),  # NumPy's seeding refuses it; caught before any training
    ("diagnostics.every_n_batches", 0),
    ("convergence.every_steps", 0),
])
def test_invalid_param_is_rejected_before_training(tmp_path, field, value):
    def mutate(params):
        *parents, leaf = field.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value

    project = make_project_copy(tmp_path / "project", tiny_params())
    set_params(project, mutate)
    env = subprocess_env(tmp_path)
    proc = run(train_cmd("plain"), project, env, timeout=60)  # 'plain' even when another variant is broken
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert error.startswith(f"error: params: '{field}' = "), error
    assert "epoch" not in proc.stdout
    assert not (tmp_path / "store" / "mlflow.db").exists()  # no store, so no run
    assert not (project / "data").exists()


@pytest.mark.parametrize("module", ["train", "data.download", "data.normalize", "compare"])
def test_params_yaml_syntax_error_is_one_line_with_its_line_number(tmp_path, module):
    project = make_project_copy(tmp_path / "project", tiny_params())
    lines = (project / "params.yaml").read_text().splitlines()
    where = next(i for i, line in enumerate(lines) if line.strip().startswith("batch_size:"))
    lines[where] = lines[where] + ": oops"
    (project / "params.yaml").write_text("\n".join(lines) + "\n")
    args = ["--variant", "plain"] if module == "train" else []
    proc = run([PYTHON, "-m", f"pipeline.{module}", *args], project, subprocess_env(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = one_line_error(proc.stderr)
    assert "YAML syntax error" in error and f"line {where + 1}," in error, error


# --------------------------------------------------------------------------- 8. hygiene


def slow_mirror(sent: threading.Event) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler serving the fixture files 256 bytes every 50 ms; ``sent`` is set once a
    transfer is under way. Each transfer stops by itself after 60 s."""

    class SlowMirror(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            path = FIXTURE_MNIST / Path(self.path).name
            if not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            deadline = time.monotonic() + 60
            try:
                for i in range(0, len(body), 256):
                    if time.monotonic() > deadline:
                        return
                    self.wfile.write(body[i:i + 256])
                    self.wfile.flush()
                    if i >= 2048:
                        sent.set()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    return SlowMirror


def test_download_killed_mid_transfer_leaves_nothing(tmp_path):
    sent = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), slow_mirror(sent))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        project = make_project_copy(tmp_path / "project", tiny_params())
        (tmp_path / "tmp").mkdir()
        env = subprocess_env(tmp_path, MNIST_MIRROR=f"http://127.0.0.1:{server.server_address[1]}/",
                             TMPDIR=str(tmp_path / "tmp"))
        proc = Proc([PYTHON, "-m", "pipeline.data.download"], project, env, tmp_path / "logs", "download")
        try:
            assert sent.wait(60), proc.stderr
            data = project / "data"
            assert [p.name for p in data.iterdir() if p.name.startswith(".download-")]  # mid-transfer indeed
            proc.popen.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        finally:
            proc.kill()
    finally:
        server.shutdown()
        server.server_close()
    assert code == 130, proc.stderr[-3000:]
    assert "interrupted" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in data.iterdir()) == ["raw"]
    assert list((data / "raw").iterdir()) == []
    assert leftovers(project, tmp_path / "tmp") == []
