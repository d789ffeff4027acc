"""Starting benchmark workers: each measurement in a fresh subprocess, re-run when disturbed.

In: a worker spec (see ``benchmarks.workers``), a work folder and a ``Plan`` (how long to
wait for a quiet machine, how often to re-run a disturbed run).
Out: the worker's result, plus ``other_cores_mean`` (others' CPU while it ran),
``waited_seconds`` and the ``discarded`` disturbed attempts. A fresh process per run keeps
TF state (op determinism, thread pools, traced functions) from leaking between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.plan import Plan
from benchmarks.quiet import CpuAccount, say, wait_for_quiet
from pipeline.core import paths
from pipeline.core.errors import UserError

# Variables a surrounding DVC stage or MLflow run would leak into the runs.
LEAKY_VARIABLES = ("DVC_ROOT", "DVC_EXP_NAME", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without DVC/MLflow run variables, this Python's bin first on PATH, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if name not in LEAKY_VARIABLES}
    bin_dir = str(Path(sys.executable).parent)
    env.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "DVC_NO_ANALYTICS": "1",
                "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"})
    env.update(extra)
    return env


def run_worker(spec: dict, work: Path, name: str, env_extra: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``python -m benchmarks _worker`` on ``spec`` in ``work/name`` with its own MLflow store."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = folder / "spec.json", folder / "result.json", folder / "worker.log"
    spec_path.write_text(json.dumps(spec, indent=2))
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'store' / 'mlflow.db'}", **(env_extra or {}))
    account = CpuAccount(snapshot_processes=False)
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, "-m", "benchmarks", "_worker", str(spec_path), str(out_path)],
                              cwd=paths.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0 or not out_path.exists():
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise UserError(f"benchmark worker {name} failed (exit {proc.returncode}); its log {log_path} ends:\n{tail}")
    result = json.loads(out_path.read_text())
    result["other_cores_mean"] = account.other_cores()  # CPU others took while this worker ran
    return result


def measure(plan: Plan, spec: dict, work: Path, name: str, env_extra: dict | None = None) -> dict:
    """One run, started on a quiet machine if ``plan.quiet_wait``; re-run (``plan.retries``
    times) when others' CPU disturbed it. The disturbed attempts are kept in ``discarded``."""
    discarded = []
    for attempt in range(plan.retries + 1):
        waited = wait_for_quiet(plan.quiet_wait, plan.quiet_threshold) if plan.quiet_wait > 0 else 0.0
        result = run_worker(spec, work, name if attempt == 0 else f"{name}-retry{attempt}", env_extra)
        result["waited_seconds"] = waited
        if result["other_cores_mean"] < plan.quiet_threshold or attempt == plan.retries:
            result["discarded"] = discarded
            return result
        say(f"  others used {result['other_cores_mean']:.2f} cores during the run: running it again")
        discarded.append({k: result[k] for k in ("images_per_second", "steady_images_per_second", "other_cores_mean")})
    raise AssertionError("unreachable")
