"""Stage times and memory of ``dvc repro`` in a fresh copy of the project.

In: the ``Plan``, params.yaml as a mapping and a work folder; MNIST from the fixture subset
(``--quick``), ``--mirror``, ``MNIST_MIRROR``, ``data/raw`` or the mirrors in params.yaml.
Out: every stage's wall time (from the timestamps of DVC's ``Running stage`` lines), the
peak RSS of each stage's processes (psutil, sampled every 0.1 s), and the time of three
no-op ``dvc repro`` runs. The project's own data, results and store are never touched.
"""

from __future__ import annotations

import copy
import os
import re
import resource
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.launch import clean_env
from benchmarks.plan import Plan, load_params
from benchmarks.quiet import say
from benchmarks.spread import spread
from pipeline.core import paths
from pipeline.core.errors import UserError
from testbed import FIXTURE_MNIST, fixture_pins, project_copy

RUNNING = re.compile(r"Running stage '([^']+)'")
NOOP_RUNS = 3


def stage_times(lines: list[tuple[float, str]], start: float, end: float) -> dict[str, Any]:
    """Per-stage wall time from timestamped DVC output lines: a stage runs from its
    ``Running stage`` line to the next one (or the end), so caching its outputs and
    updating the lock file count as the stage's time."""
    starts = [(t, m.group(1)) for t, line in lines if (m := RUNNING.search(line))]
    stages = {}
    for i, (t, name) in enumerate(starts):
        t_next = starts[i + 1][0] if i + 1 < len(starts) else end
        stages[name] = t_next - t
    return {"stages": stages, "startup_seconds": (starts[0][0] - start) if starts else end - start,
            "total_seconds": end - start}


class RssSampler(threading.Thread):
    """Peak RSS of the processes under ``pid``, per stage (``current`` is set by the reader):
    of the whole tree (sum), and of each process by command line."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.current = "(dvc startup)"
        self.peak_tree: dict[str, int] = {}
        self.peak_process: dict[str, dict[str, int]] = {}
        self._halt = threading.Event()

    def _sample(self, processes) -> None:
        import psutil

        tree = 0
        peaks = self.peak_process.setdefault(self.current, {})
        for process in processes:
            try:
                rss = process.memory_info().rss
                command = " ".join(process.cmdline())[:120]
            except psutil.Error:
                continue
            tree += rss
            peaks[command] = max(peaks.get(command, 0), rss)
        self.peak_tree[self.current] = max(self.peak_tree.get(self.current, 0), tree)

    def run(self):
        import psutil

        while not self._halt.is_set():
            try:
                self._sample(self.root.children(recursive=True))
            except psutil.Error:
                break
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)

    def peak_of(self, stage: str, needle: str) -> int:
        """The largest peak of the stage's processes whose command line holds ``needle``."""
        return max([rss for cmd, rss in self.peak_process.get(stage, {}).items() if needle in cmd], default=0)


def dvc_repro_timed(project: Path, env: dict, timeout: float = 7200) -> dict[str, Any]:
    """``dvc repro`` in ``project``, its output lines timestamped and its processes sampled."""
    start = time.perf_counter()
    proc = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    sampler = RssSampler(proc.pid)
    sampler.start()
    lines: list[tuple[float, str]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter()
        lines.append((now, line.rstrip("\n")))
        if m := RUNNING.search(line):
            sampler.current = m.group(1)
        if now > start + timeout:
            proc.kill()
            break
    returncode = proc.wait()
    end = time.perf_counter()
    sampler.stop()
    out = stage_times(lines, start, end)
    out.update(returncode=returncode, output=[line for _, line in lines], peak_rss_bytes_by_stage=sampler.peak_tree,
               peak_stage_process_rss_bytes={stage: sampler.peak_of(stage, "pipeline.") for stage in out["stages"]},
               processes_by_stage={stage: dict(sorted(per.items(), key=lambda kv: -kv[1])[:4])
                                   for stage, per in sampler.peak_process.items()})
    return out


def choose_mirror(plan: Plan) -> str | None:
    """Where the copy's download stage reads MNIST; None: the mirrors listed in params.yaml."""
    if plan.quick:
        return str(FIXTURE_MNIST)
    if plan.mirror:
        return plan.mirror
    if os.environ.get("MNIST_MIRROR"):
        return os.environ["MNIST_MIRROR"]
    params = load_params()
    if all((paths.RAW / name).is_file() for name in params["download"]["files"]):
        return str(paths.RAW)  # read only: download copies from a mirror folder into the copy
    return None


def stage_params(plan: Plan, base: dict) -> dict:
    """params.yaml for the copy: 1 epoch; in quick mode the fixture subset, one variant and one seed."""
    params = copy.deepcopy(base)
    params["train"]["epochs"] = 1
    if plan.quick:
        params["download"]["mirrors"] = []
        params["download"]["files"] = fixture_pins()
        params["variants"] = {plan.variants[0]: params["variants"][plan.variants[0]]}  # one stage is enough to check
        params["seeds"] = params["seeds"][:1]
    return params


def noop_seconds(project: Path, env: dict) -> list[float]:
    """Wall times of ``dvc repro`` runs that must find nothing to do."""
    seconds = []
    for i in range(NOOP_RUNS):
        start = time.perf_counter()
        proc = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if proc.returncode != 0 or RUNNING.search(proc.stdout):
            raise UserError(f"the no-op `dvc repro` #{i + 1} in {project} ran a stage or failed:\n"
                            f"{proc.stdout}{proc.stderr}")
    return seconds


def measure_stages(plan: Plan, base: dict, work: Path) -> dict[str, Any]:
    """A timed 1-epoch ``dvc repro`` and no-op repros in a fresh project copy under ``work``."""
    params = stage_params(plan, base)
    project = project_copy(work / "project", params)
    mirror = choose_mirror(plan)
    env = clean_env(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    env.pop("MNIST_MIRROR", None)
    if mirror:
        env["MNIST_MIRROR"] = mirror
    say(f"dvc repro (1 epoch) in {project}")
    first = dvc_repro_timed(project, env)
    if first["returncode"] != 0:
        tail = "\n".join(first["output"][-30:])
        raise UserError(f"`dvc repro` in the benchmark copy {project} failed (exit {first['returncode']}):\n{tail}")
    children_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    noops = noop_seconds(project, env)
    say(f"dvc repro took {first['total_seconds']:.1f} s; no-op {statistics.median(noops):.2f} s")
    train_peaks = [rss for stage, rss in first["peak_stage_process_rss_bytes"].items() if stage.startswith("train@")]
    return {"project": str(project), "mirror": mirror, "epochs": 1,
            "variants": list(params["variants"]), "seeds": params.get("seeds"),
            "stage_seconds": first["stages"], "dvc_startup_seconds": first["startup_seconds"],
            "repro_seconds": first["total_seconds"], "noop_seconds": spread(noops),
            "peak_rss_bytes_by_stage": first["peak_stage_process_rss_bytes"],
            "peak_tree_rss_bytes_by_stage": first["peak_rss_bytes_by_stage"],
            "largest_processes_by_stage": first["processes_by_stage"],
            "train_stage_peak_rss_bytes_sampled": max(train_peaks, default=0),
            "max_child_rss_bytes_getrusage": children_maxrss,
            "prepared": str(project / "data" / "prepared")}
