"""Shared test fixtures: the config shrinks (tiny MNIST subset, 1 epoch, a temporary
tracking store), the code under test stays the real code."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.paths import ROOT  # noqa: F401  (re-exported to the tests)
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
    from pipeline.download import download
    from pipeline.normalize import normalize

    base = tmp_path_factory.mktemp("data")
    from pipeline.params import DownloadSettings, NormalizeSettings

    settings = DownloadSettings(mirrors=[str(FIXTURE_MNIST)], files=fixture_pins())
    saved = os.environ.pop("MNIST_MIRROR", None)
    try:
        download(settings, raw_dir=base / "raw")
    finally:
        if saved is not None:
            os.environ["MNIST_MIRROR"] = saved
    normalize(NormalizeSettings(scale=255.0), raw_dir=base / "raw", out_dir=base / "prepared", summary_path=base / "summary.json")
    return base / "prepared"
