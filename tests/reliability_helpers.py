"""Helpers for tests/test_reliability.py: real processes, real servers, no mocks.

Every process a helper starts runs in its own session (process group), so a test can signal
the whole group the way a terminal's Ctrl-C does, and tear it down without touching anything
else on the machine. Servers listen on 127.0.0.1 only, on a free port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from conftest import VENV_BIN, ci_apt_install, make_project_copy, subprocess_env, tiny_params

# Names the pipeline gives its temporary files and folders; none may outlive a process.
TEMP_PREFIXES = ("lenet-artifacts-", "lenet-compare-", ".download-", ".prepared-", ".compare-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sigint_reaches_children() -> None:
    """A child started by a process that ignores SIGINT inherits it as ignored, and Python then
    never raises KeyboardInterrupt (a test runner started in the background by a shell without
    job control is such a process). A handler of our own is reset to the default on exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Proc:
    """A subprocess whose stdout is read line by line in a thread; stderr goes to a file."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict, log_dir: Path, name: str):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "w")
        self.popen = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=self._stderr, text=True, start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stdout(self) -> str:
        return "\n".join(self.lines)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> str:
        """Block until a stdout line contains ``needle``; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"process ended ({self.popen.returncode}) before printing {needle!r}\n"
                                         f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} within {timeout} s\nstdout:\n{self.stdout[-3000:]}")
                self._cond.wait(min(left, 0.5))

    def signal_group(self, sig: int) -> None:
        os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.popen.wait(timeout)
        finally:
            self._reader.join(5)
            self._stderr.close()
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(10)
        self._stderr.close()


def run(cmd: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def train_cmd(variant: str = "plain", *args: str) -> list[str]:
    return [str(VENV_BIN / "python"), "-m", "pipeline.train", "--variant", variant, "--seed", "0", *args]


def one_line_error(stderr: str) -> str:
    """The single ``error:`` line a stage prints for a UserError (and no traceback)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


# --------------------------------------------------------------------------- projects


def prepared_project(tmp: Path, params: dict | None = None, **env_extra: str) -> tuple[Path, dict]:
    """A fresh copy of the project with its data made by ``dvc repro normalize`` (fixture subset).

    The environment points MLflow at ``tmp/store/mlflow.db`` and TMPDIR at ``tmp/tmp``, so a
    test can check that no temporary file of the pipeline outlives it.
    """
    project = make_project_copy(tmp / "project", params or tiny_params())
    (tmp / "tmp").mkdir(exist_ok=True)
    env = subprocess_env(tmp, DVC_NO_ANALYTICS="1", TMPDIR=str(tmp / "tmp"))
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME",
                "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        env.pop(var, None)
    env.update(env_extra)
    proc = run(["dvc", "repro", "normalize"], project, env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return project, env


def set_params(project: Path, mutate) -> dict:
    params = yaml.safe_load((project / "params.yaml").read_text())
    mutate(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def leftovers(*roots: Path) -> list[str]:
    """Temporary files and folders of the pipeline (and half-written ``*.tmp`` files) under ``roots``."""
    found = []
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if ".git" in path.parts or ".dvc" in path.parts:
                continue
            if path.name.startswith(TEMP_PREFIXES) or path.name.endswith(".tmp"):
                found.append(str(path))
    return found


def sqlite_integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


# --------------------------------------------------------------------------- servers


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}) before answering {url}:\n"
                                 f"{log.read_text(errors='replace')[-4000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextmanager
def mlflow_server(tmp: Path, backend_uri: str, app_name: str | None = None, env: dict | None = None,
                  timeout: float = 120) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:<free port>, serving artifacts from ``tmp/artifacts``."""
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
           "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    if app_name:
        cmd += ["--app-name", app_name]
    server_env = dict(env if env is not None else os.environ)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        server_env.pop(var, None)
    server_env["PATH"] = f"{VENV_BIN}{os.pathsep}{server_env.get('PATH', '')}"
    log = tmp / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp, env=server_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, log, timeout)
        yield url
    finally:
        stop_group(proc)


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The directory holding initdb/pg_ctl (Debian puts them under /usr/lib/postgresql/N/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def ensure_postgres() -> Path | None:
    """PostgreSQL's server binaries; installed from Debian's packages only under CI as root."""
    if postgres_bin() is None:
        ci_apt_install("postgresql")
    return postgres_bin()


@contextmanager
def postgres_cluster(bindir: Path, database: str = "mlflow", timeout: float = 60) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1:<free port>; yields a SQLAlchemy URI.

    As root it runs as the ``postgres`` user (initdb refuses root), in a folder of its own
    under the system temp dir (pytest's tmp_path is private to root).
    """
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="lenet-pg-"))
    if os.geteuid() == 0:
        import pwd

        as_user = ["runuser", "-u", "postgres", "--"]
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
    data, sock, log = base / "data", base / "sock", base / "server.log"
    port = free_port()

    def sh(*cmd, check=True, t=timeout):
        return subprocess.run(as_user + [str(c) for c in cmd], capture_output=True, text=True, timeout=t,
                              check=check, cwd=base)

    started = False
    try:
        sh("mkdir", sock)
        sh(bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
           "--locale=C")
        sh(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", str(int(timeout)), "-o",
           f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        started = True
        sh(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", database)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            sh(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


SMALL = {"train_limit": 300, "test_limit": 200}
LONG = {"epochs": 50, "train_limit": 600}  # long enough to be interrupted after its first epoch


@pytest.fixture(autouse=True)
def no_default_store(monkeypatch):
    """MLflow calls in the test process name their store; one that falls back to the default
    (./mlflow.db: the real study's store) fails at once instead of touching it. Imported by the
    modules that use it, where it applies to every test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: refused
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    yield
    mlflow.set_tracking_uri(previous)


def all_runs(client) -> list:
    """Every run of every experiment in the store, deleted ones too."""
    from mlflow.entities import ViewType

    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(exps, run_view_type=ViewType.ALL, max_results=1000)
