"""How many torch CPU threads to use: by default one per core that is free right now.

torch's default is one thread per core, whether or not another process is using the core.
Its thread pool then waits at every parallel region for the thread that shares a core, and a
small model (tens of atoms) runs several times slower than on one thread. Counting the cores
of this process's affinity set that were mostly idle over a short sample (``/proc/stat``, Linux)
avoids that; elsewhere the count is the affinity set less the 1-minute load average.
"""

from __future__ import annotations

import math
import os
import time

__all__ = ["usable_cores", "free_cores", "default_threads", "configure_threads"]

SAMPLE_SECONDS = 0.2
BUSY_FRACTION = 0.5  # a core busier than this over the sample counts as taken


def usable_cores() -> list[int]:
    """CPU ids this process may run on (its affinity set), capped by a cgroup CPU quota."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = cores[:max(1, math.ceil(int(quota) / int(period)))]
    except (OSError, ValueError):
        pass
    return cores


def _cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU id: (idle + iowait jiffies, total jiffies) from /proc/stat."""
    times = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                values = [int(v) for v in fields[:8]]
                times[int(name[3:])] = (values[3] + values[4], sum(values))
    return times


def free_cores(sample_seconds: float = SAMPLE_SECONDS) -> int:
    """Cores of :func:`usable_cores` that were at most half busy over ``sample_seconds``
    (at least 1)."""
    cores = usable_cores()
    try:
        before = _cpu_times()
        time.sleep(sample_seconds)
        after = _cpu_times()
        busy = 0
        for cpu in cores:
            idle = after[cpu][0] - before[cpu][0]
            total = after[cpu][1] - before[cpu][1]
            busy += total > 0 and 1.0 - idle / total > BUSY_FRACTION
        return max(1, len(cores) - busy)
    except (OSError, KeyError, ValueError, IndexError):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(1, len(cores) - round(load))


def default_threads() -> int:
    """``OMP_NUM_THREADS`` if set, else :func:`free_cores`."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else free_cores()


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to ``requested`` or :func:`default_threads`; return it."""
    import torch

    threads = requested or default_threads()
    torch.set_num_threads(threads)
    return threads
