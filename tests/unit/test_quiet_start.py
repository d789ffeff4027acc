"""A stage's log starts with what the stage does: a stage's entry point (``cli.run_main``) keeps
TensorFlow's start-up notices (the absl pre-init line, oneDNN's notice, printed twice) off stderr,
and nothing else TensorFlow writes while it loads. Importing the package alone changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

ABSL = "absl::InitializeLog"
ONEDNN = "oneDNN custom operations"


def run_python(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_a_stage_entry_point_silences_tensorflow_start_up_and_an_import_does_not():
    # oneDNN is on by default only on CPUs with AVX512-VNNI/AMX; forcing it makes TensorFlow
    # print its notice here too, as it does on such machines.
    loud = run_python("import pipeline.train.model", TF_CPP_MIN_LOG_LEVEL="0", TF_ENABLE_ONEDNN_OPTS="1")
    assert loud.returncode == 0, loud.stderr
    if ONEDNN not in loud.stderr:
        pytest.skip("this TensorFlow build prints no oneDNN notice")
    assert loud.stderr.count(ABSL) == 2  # what users saw: the notices twice

    imported = run_python("import pipeline.train.model", TF_ENABLE_ONEDNN_OPTS="1")
    assert imported.returncode == 0 and imported.stderr.count(ABSL) == 2, imported.stderr  # no side effect on import

    quiet = run_python("from pipeline.core.cli import run_main; run_main(lambda: __import__('pipeline.train.model'))",
                       TF_ENABLE_ONEDNN_OPTS="1")
    assert quiet.returncode == 0, quiet.stderr
    assert ABSL not in quiet.stderr and ONEDNN not in quiet.stderr, quiet.stderr
    assert "cpu_feature_guard" not in quiet.stderr, quiet.stderr


def test_other_start_up_output_and_a_crash_still_reach_stderr(tmp_path):
    """A stand-in ``tensorflow`` that writes the notices, a real error and then aborts: only
    the notices are dropped, and the error written just before the crash comes out."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os, sys\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1.2    42 port.cc:153] oneDNN custom operations are on. See TF_ENABLE_ONEDNN_OPTS=0.\\n')\n"
        "print('a Python warning while loading', file=sys.stderr)\n"
        "os.write(2, b'F0000 00:00:1.3    42 cpu_feature_guard.cc:1] AVX is not available on this machine\\n')\n"
        "os.abort()\n")
    result = run_python("from pipeline.core import quiet; quiet.install(); import tensorflow", PYTHONPATH=str(tmp_path))
    assert result.returncode != 0
    assert ABSL not in result.stderr and ONEDNN not in result.stderr, result.stderr
    assert "a Python warning while loading" in result.stderr
    assert "AVX is not available on this machine" in result.stderr

    unfiltered = run_python("from pipeline.core import quiet; quiet.install(); import tensorflow",
                            PYTHONPATH=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="0")
    assert ABSL in unfiltered.stderr and ONEDNN in unfiltered.stderr
