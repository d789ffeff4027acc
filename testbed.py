"""The test bed the tests and the benchmark share (development only, not shipped).

In: the project's git working copy (``git ls-files``) and the MNIST fixture subset under
``tests/fixtures/mnist`` (its files and their ``SHA256SUMS``).
Out: ``FIXTURE_MNIST`` (that folder), ``fixture_pins()`` (file name -> SHA-256, the
``download.files`` of params.yaml for the subset) and ``project_copy(dest, params)``: a
fresh git + DVC repository holding the project's tracked files (``pipeline/``,
``benchmarks/``, this module, dvc.yaml, ...; no data, results, reports, tests or lock
file) and the given params.yaml.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from pipeline.core.errors import UserError
from pipeline.core.paths import ROOT

FIXTURE_MNIST = ROOT / "tests" / "fixtures" / "mnist"

# Tracked paths a project copy leaves out: it reproduces the pipeline, not its outputs.
NOT_COPIED = ("tests/", "data/", "results/", "reports/", ".ci/")
# ... except what a fresh clone needs to run: the folder the choose stages depend on, grid or not.
KEPT = ("results/lr_grid/README.md",)


def fixture_pins() -> dict[str, str]:
    """File name -> SHA-256 of every file of the fixture subset."""
    pins = {}
    for line in (FIXTURE_MNIST / "SHA256SUMS").read_text().splitlines():
        sha, name = line.split()
        pins[name] = sha
    return pins


def tracked_files() -> list[str]:
    """The project's files as git knows them (the index: a new file counts once it is added)."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        listed = ""
    files = [line for line in listed.splitlines() if line]
    if not files:
        raise UserError(f"{ROOT} is not a git working copy: `git ls-files` listed nothing to copy")
    return files


def project_copy(dest: Path, params: dict) -> Path:
    """The project's tracked files, as they are in the working tree, plus ``params`` as
    params.yaml, committed in a fresh git repository at ``dest`` (DVC's own ``.dvc/`` is tracked)."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in tracked_files():
        if (rel.startswith(NOT_COPIED) and rel not in KEPT) or rel == "dvc.lock" or not (ROOT / rel).exists():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "benchmark copy"]):
        subprocess.run(git + cmd, cwd=dest, check=True, capture_output=True)
    return dest
