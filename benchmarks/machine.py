"""What the benchmark ran on: the machine, the library versions and the git commit.

In: /proc/cpuinfo, psutil, the installed distributions and ``git`` in the project root.
Out: ``machine_info()`` (CPU, cores, memory, Python/TensorFlow/Keras/NumPy versions, oneDNN
setting) and ``git_state()`` (commit and whether tracked files have local changes).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from pipeline.core import paths


def git(*args: str) -> str:
    """``git ARGS`` in the project root, its output stripped; empty when git fails."""
    try:
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state() -> dict[str, Any]:
    return {"git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version(dist)
    except PackageNotFoundError:
        return "unknown"


def machine_info() -> dict[str, Any]:
    import psutil

    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "python": platform.python_version(), "tensorflow": version("tensorflow-cpu"),
            "keras": version("keras"), "numpy": version("numpy"),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)")}
