"""How many CPUs this process may use, for the engines that size their thread pools by it.

`os.cpu_count()` counts the machine's cores, not the ones a process gets: a pod limited to 4 CPUs
on a 64-core node would start 63 llama.cpp threads that spin at barriers for 4 cores' time. The
answer here is the process's CPU affinity (cpusets, `taskset`), capped by the CPU quota of its
cgroup (a Kubernetes CPU limit), rounded up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Where a container sees its own cgroup (the cgroup namespace's root).
CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    # Affinity is Linux's; elsewhere every core counts.
    affinity = getattr(os, "sched_getaffinity", None)
    count = len(affinity(0)) if affinity else os.cpu_count() or 1
    quota = cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def cpu_quota(cgroup_root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU limit in CPUs (cgroup v2's `cpu.max`, else v1's CFS quota and period), or
    None when there is none or it cannot be read."""
    try:
        limit, window = (cgroup_root / "cpu.max").read_text().split()
        return None if limit == "max" else int(limit) / int(window)
    except (OSError, ValueError):
        pass
    v1 = cgroup_root / "cpu"
    try:
        quota = int((v1 / "cpu.cfs_quota_us").read_text())
        period = int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
