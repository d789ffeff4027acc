"""CPU quietness: how much CPU other processes took while the benchmark ran, and waiting for them.

In: the system's CPU times (psutil) and our own and our children's (``getrusage``).
Out: ``CpuAccount`` (cores others used since it started; a report with load averages and
the processes busy at the start) and ``wait_for_quiet`` (seconds spent waiting until
others use fewer than ``QUIET_CORES`` cores).
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

QUIET_CORES = 0.1  # others' CPU, in cores, below which the machine counts as quiet


def say(message: str) -> None:
    """A timestamped progress line on stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def busy_processes(threshold_percent: float = 10.0) -> list[str]:
    """Processes other than this one using >= ``threshold_percent`` of a CPU over one second."""
    import psutil

    watched = []
    for process in psutil.process_iter(["pid", "name"]):
        try:
            process.cpu_percent(None)
            watched.append(process)
        except psutil.Error:
            pass
    time.sleep(1.0)
    busy = []
    for process in watched:
        try:
            percent = process.cpu_percent(None)
            if process.pid != os.getpid() and percent >= threshold_percent:
                busy.append(f"{process.info['name']} (pid {process.pid}, {percent:.0f}% CPU)")
        except psutil.Error:
            pass
    return busy


class CpuAccount:
    """How much CPU other processes used while we ran: system busy time minus our own."""

    def __init__(self, snapshot_processes: bool = True):
        self.load_start = os.getloadavg()
        self.busy_at_start = busy_processes() if snapshot_processes else []
        self.wall0 = time.perf_counter()
        self.busy0 = self._system_busy()
        self.ours0 = self._ours()

    @staticmethod
    def _system_busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    @staticmethod
    def _ours() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def _others(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of other processes) since the start."""
        wall = time.perf_counter() - self.wall0
        return wall, max(0.0, (self._system_busy() - self.busy0) - (self._ours() - self.ours0))

    def other_cores(self) -> float:
        """Cores' worth of CPU that processes other than ours used since the start, on average."""
        wall, other = self._others()
        return other / wall if wall > 0 else 0.0

    def report(self) -> dict[str, Any]:
        """The whole benchmark's account: others' CPU, load averages and whether it was quiet."""
        wall, other = self._others()
        other_cores = other / wall if wall > 0 else 0.0
        quiet = other_cores < QUIET_CORES and not self.busy_at_start
        return {"wall_seconds": wall, "other_cpu_seconds": other, "other_cores_mean": other_cores,
                "load_average_start": list(self.load_start), "load_average_end": list(os.getloadavg()),
                "busy_processes_at_start": self.busy_at_start, "quiet": quiet}


def wait_for_quiet(max_wait: float, threshold: float = QUIET_CORES, window: float = 3.0) -> float:
    """Wait (at most ``max_wait`` s) until other processes use < ``threshold`` cores over ``window`` s."""
    start = time.perf_counter()
    announced = False
    while time.perf_counter() - start < max_wait:
        account = CpuAccount(snapshot_processes=False)
        time.sleep(window)
        other = account.other_cores()
        if other < threshold:
            break
        if not announced:
            say(f"  waiting for the machine to be quiet (others use {other:.2f} cores)")
            announced = True
    return time.perf_counter() - start
