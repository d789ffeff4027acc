"""Shared test fixtures: the config shrinks (tiny MNIST subset, 1 epoch, a temporary
tracking store), the code under test stays the real code."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.paths import ROOT  # noqa: F401  (re-exported to the tests)
from testbed import FIXTURE_MNIST, fixture_pins  # noqa: F401  (re-exported to the tests)
from testbed import project_copy as _testbed_project_copy

VENV_BIN = Path(sys.executable).parent

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tiny_params(**train_overrides) -> dict:
    """params.yaml as committed, pointed at the fixture subset and shrunk to 1 epoch and 1 seed."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["download"]["mirrors"] = []
    params["download"]["files"] = fixture_pins()
    params["train"].update({"epochs": 1, "batch_size": 128, **train_overrides})
    params["seeds"] = [0]
    params["lr_grid"]["seeds"] = [0]
    params["mlflow"]["experiment"] = "test-study"
    return params


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DVC_ROOT", None)
    env.update({
        "MNIST_MIRROR": str(FIXTURE_MNIST),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/store/mlflow.db",
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    })
    env.update(extra)
    (tmp_path / "store").mkdir(exist_ok=True)
    return env


def ci_apt_install(*packages: str) -> None:
    """Debian packages, installed only under CI as root (the browser and PostgreSQL tests). One
    install at a time across test workers: apt holds a lock and fails, rather than waits, when
    another apt runs."""
    import fcntl
    import shutil
    import subprocess

    if os.environ.get("CI") != "true" or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with open("/tmp/lenet-tests-apt.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env,
                       check=False, capture_output=True, timeout=900)


def make_project_copy(dest: Path, params: dict | None = None) -> Path:
    """A copy of the project's tracked files (no data, no store) as a fresh git + DVC repo:
    the benchmark's copy (``testbed.project_copy``), with the tiny params by default."""
    return _testbed_project_copy(dest, params or tiny_params())


@pytest.fixture
def project_copy(tmp_path) -> Path:
    return make_project_copy(tmp_path / "project")


@pytest.fixture(scope="session")
def prepared_fixture(tmp_path_factory) -> Path:
    """The fixture subset run through the real download and normalize stages."""
    from pipeline.data.download import download
    from pipeline.data.normalize import normalize

    base = tmp_path_factory.mktemp("data")
    from pipeline.core.params import DownloadSettings, NormalizeSettings

    settings = DownloadSettings(mirrors=[str(FIXTURE_MNIST)], files=fixture_pins())
    saved = os.environ.pop("MNIST_MIRROR", None)
    try:
        download(settings, raw_dir=base / "raw")
    finally:
        if saved is not None:
            os.environ["MNIST_MIRROR"] = saved
    normalize(NormalizeSettings(scale=255.0), raw_dir=base / "raw", out_dir=base / "prepared", summary_path=base / "summary.json")
    return base / "prepared"


# `make test` runs the files on two workers (pytest-xdist, ``--dist loadfile``: a file's tests stay
# together, so its module fixtures are built once and its Ray clusters never overlap another's).
# Started longest first, the two workers finish close together; the order is only a schedule.
LONGEST_FIRST = ("test_operations.py", "test_store_faults.py", "test_reliability.py", "test_sweep.py", "test_bench.py",
                 "test_backend.py", "test_train.py", "test_compare.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def holm_by_definition(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment written out, for checking the code's: the k-th smallest p times (m - k),
    running maximum, capped at 1."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - k) * ps[i]))
        out[i] = running
    return out
