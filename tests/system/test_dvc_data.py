"""The data stages as a user runs them: ``dvc repro normalize`` in a fresh copy of the
project (MNIST_MIRROR pointing at the fixture subset), and ``python -m pipeline.data.download``
failing the way a user should see it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import fixture_pins, make_project_copy, subprocess_env, tiny_params
from pipeline.data.idx import payload_sha256

pytestmark = pytest.mark.slow


def run(cmd, cwd, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_dvc_repro_normalize_end_to_end(tmp_path):
    project = make_project_copy(tmp_path / "p")
    env = subprocess_env(tmp_path, DVC_NO_ANALYTICS="1")
    first = run(["dvc", "repro", "normalize"], project, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'download'" in first.stdout and "Running stage 'normalize'" in first.stdout

    pins = fixture_pins()
    raw = project / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(pins)
    for name, sha in pins.items():
        assert payload_sha256(raw / name) == sha

    prepared = project / "data" / "prepared"
    shapes = {key: np.load(prepared / f"{key}.npy", mmap_mode="r").shape
              for key in ("x_train", "y_train", "x_test", "y_test")}
    assert shapes == {"x_train": (600, 28, 28, 1), "y_train": (600,), "x_test": (300, 28, 28, 1), "y_test": (300,)}
    summary = json.loads((project / "data" / "summary.json").read_text())
    assert summary["train"]["n"] == 600 and summary["test"]["n"] == 300
    assert not [p.name for p in (project / "data").iterdir() if p.name.startswith((".download-", ".prepared-"))]

    lock = (project / "dvc.lock").read_text()
    assert "download:" in lock and "normalize:" in lock

    summary_mtime = (project / "data" / "summary.json").stat().st_mtime_ns
    second = run(["dvc", "repro", "normalize"], project, env)
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert "didn't change" in out or "up to date" in out, out
    assert "Running stage" not in out, out
    assert (project / "data" / "summary.json").stat().st_mtime_ns == summary_mtime


def test_download_with_wrong_pin_exits_2_with_one_error(tmp_path):
    params = tiny_params()
    bad = "t10k-labels-idx1-ubyte.gz"
    params["download"]["files"][bad] = "0" * 64
    project = make_project_copy(tmp_path / "p", params=params)
    env = subprocess_env(tmp_path)
    proc = run([sys.executable, "-m", "pipeline.data.download"], project, env, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert bad in errors[0] and "could not get a verified copy" in errors[0]
    assert "does not match the pin" in proc.stderr and env["MNIST_MIRROR"] in proc.stderr
    assert "Traceback" not in proc.stderr
    raw = project / "data" / "raw"
    assert bad not in {p.name for p in raw.iterdir()}
    # The files listed before it verified and stay; nothing temporary is left beside raw/.
    for name in {p.name for p in raw.iterdir()}:
        assert payload_sha256(raw / name) == params["download"]["files"][name]
    assert not [p.name for p in (project / "data").iterdir() if p.name.startswith(".download-")]
