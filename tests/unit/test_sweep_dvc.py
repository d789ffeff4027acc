"""The sweep's own ``dvc repro`` calls (the prerequisites and the choose stages): dvc.yaml's commands call
``python``, which must be the sweep's interpreter however it was started, and a failure says why."""

from __future__ import annotations

import subprocess
import sys

from pipeline.sweep.dvc import repro_failure, stage_env


def test_stage_commands_get_this_interpreter_even_when_path_lacks_it(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # started as .venv/bin/python -m pipeline.sweep, venv not active
    out = subprocess.run(["python", "-c", "import sys; print(sys.prefix)"], env=stage_env(),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == sys.prefix


def test_a_failed_repro_names_dvcs_error_and_the_stages_last_words(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages:\n  broken:\n    cmd: python -c 'import no_such_module_here'\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "broken"], cwd=tmp_path, capture_output=True,
                          text=True, env=stage_env())
    assert proc.returncode != 0
    message = str(repro_failure("broken", proc))
    assert message.startswith("`dvc repro broken` failed: ERROR: failed to reproduce 'broken'"), message
    assert "No module named 'no_such_module_here'" in message
    assert "\n" not in message
