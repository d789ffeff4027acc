"""Which process a run belongs to, and closing the runs whose process is provably gone.

In: an MLflow client, an experiment (and a run name), and this machine's processes (``psutil``).
Out: ``process_tags()``, the tags every training run is created with (host, boot id, pid, the
process's start time); ``process_verdict(tags)``, a ``Verdict`` on a RUNNING run: its process is gone (same
host, and no live process with that pid and start time, or the host rebooted since), alive, or
cannot be judged here (another host, no process tags) with the reason; ``close_dead_runs(...)``,
called before a training opens its run: every RUNNING run of the same name whose process is gone
ends KILLED, tagged ``closed_by``; ``stale(...)``, the lines of ``python -m pipeline.core.tracking stale``.
A run whose process may be alive is never closed.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

TAG_HOST = "process.host"
TAG_BOOT_ID = "process.boot_id"
TAG_PID = "process.pid"
TAG_START = "process.start_time"  # seconds since the epoch, as psutil reports the process's creation
TAG_CLOSED_BY = "closed_by"
# A live process with the recorded pid, started within this many seconds of the recorded time, is
# the run's own (start times read twice can differ by a clock adjustment; pids are not reused that fast).
SAME_START_S = 1.0
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot of the machine (Linux); "" where the system does not say."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return float("nan")  # there, but unreadable: treated as alive


def process_tags(pid: int | None = None) -> dict[str, str]:
    pid = pid or os.getpid()
    return {TAG_HOST: socket.gethostname(), TAG_BOOT_ID: boot_id(), TAG_PID: str(pid),
            TAG_START: f"{start_time(pid):.2f}"}


@dataclass(frozen=True)
class Verdict:
    state: str   # "gone", "alive" or "unknown"
    reason: str


def process_verdict(tags: dict[str, str]) -> Verdict:
    """Whether the process that created a run (by its process tags) is gone, alive, or unknowable here."""
    host, pid = tags.get(TAG_HOST), tags.get(TAG_PID)
    if not host or not pid:
        return Verdict("unknown", "it has no process tags (logged by an older version or another tool)")
    if host != socket.gethostname():
        return Verdict("unknown", f"its process ran on {host}; run this command there")
    pid_text = f"process {pid} on {host}"
    if tags.get(TAG_BOOT_ID) and boot_id() and tags[TAG_BOOT_ID] != boot_id():
        return Verdict("gone", f"{pid_text} is gone: the machine restarted since")
    now = start_time(int(pid))
    if now is None:
        return Verdict("gone", f"{pid_text} is gone")
    recorded = float(tags.get(TAG_START) or "nan")
    if abs(now - recorded) > SAME_START_S:  # NaN (unreadable or unrecorded) compares False: alive
        return Verdict("gone", f"{pid_text} is gone (the pid now belongs to a process started later)")
    return Verdict("alive", f"{pid_text} is alive")


def close(client, run, reason: str, by: str) -> None:
    client.set_tag(run.info.run_id, TAG_CLOSED_BY, f"{by}: {reason}")
    client.set_terminated(run.info.run_id, status="KILLED")


def running_runs(client, experiment_ids: list[str], run_name: str | None = None) -> list:
    query = "attributes.status = 'RUNNING'"
    if run_name is not None:
        query += " and attributes.run_name = '{}'".format(run_name.replace("'", "\\'"))
    return client.search_runs(experiment_ids, query, max_results=1000)


def close_dead_runs(client, experiment_id: str, run_name: str, keep: str | None = None) -> list[str]:
    """End as KILLED the RUNNING runs named ``run_name`` whose process is provably gone (not ``keep``)."""
    closed = []
    for run in running_runs(client, [experiment_id], run_name):
        verdict = process_verdict(run.data.tags)
        if run.info.run_id != keep and verdict.state == "gone":
            close(client, run, verdict.reason, f"training {run_name} (pid {os.getpid()}) before starting again")
            print(f"closed run {run.info.run_id} ({run_name}) as KILLED: {verdict.reason}", flush=True)
            closed.append(run.info.run_id)
    return closed


def stale(client, experiment_ids: list[str], close_gone: bool) -> list[str]:
    """One line per RUNNING run: closed (``close_gone``) or closable, alive, or why it cannot be judged."""
    lines = []
    for run in running_runs(client, experiment_ids):
        verdict = process_verdict(run.data.tags)
        name = f"{run.info.run_id} ({run.info.run_name})"
        if verdict.state == "gone" and close_gone:
            close(client, run, verdict.reason, f"python -m pipeline.core.tracking stale --close on {socket.gethostname()}")
            lines.append(f"closed {name} as KILLED: {verdict.reason}")
        elif verdict.state == "gone":
            lines.append(f"stale {name}: {verdict.reason}; --close ends it KILLED")
        elif verdict.state == "alive":
            lines.append(f"running {name}: {verdict.reason}; left as it is")
        else:
            lines.append(f"left {name}: cannot judge, {verdict.reason}")
    return lines or ["no RUNNING runs"]
