"""What this process may use of the machine: cores and memory, as a container or scheduler limits them.

Affinity (``taskset``, cpusets) says which cores a process may run on; a CPU quota (``docker run
--cpus 2``: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) says how much of their time it gets. A
container limited to 2 CPUs' worth of time on a 16-core host sees 16 cores by affinity, and 9 workers
there would share 2 CPUs. Memory likewise: the machine's available memory, or less where a cgroup
(``memory.max``, v1 ``memory.limit_in_bytes``) caps it. Every reader takes the file-system root and
``/proc/self/cgroup`` as arguments, so tests answer with fake files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
GIB = 1024 ** 3


def _cgroup_dirs(root: Path, controller: str, self_cgroup: Path) -> list[Path]:
    """The folders whose limits apply to this process, innermost first: its own cgroup and every
    parent up to the mount point, under the v2 unified tree and the v1 ``controller`` tree."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    dirs = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            base = root
        elif controller in controllers.split(","):
            base = next((root / name for name in (controllers, controller) if (root / name).is_dir()), root / controller)
        else:
            continue
        relative = Path(path.lstrip("/"))
        dirs += [base / parent for parent in (relative, *relative.parents)]
    # no /proc/self/cgroup (or inside a cgroup namespace): the mount points themselves
    return dirs + [root, root / controller, root / f"{controller},cpuacct", root / f"cpuacct,{controller}"]


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs' worth of time the tightest cgroup quota allows (e.g. 2.0), or None where none is set."""
    quotas = []
    for folder in _cgroup_dirs(root, "cpu", self_cgroup):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]  # v2: "200000 100000" or "max 100000"
            if quota != "max":
                quotas.append(int(quota) / int(period))
            continue
        except (OSError, ValueError):
            pass
        quota, period = _read_int(folder / "cpu.cfs_quota_us"), _read_int(folder / "cpu.cfs_period_us")
        if quota is not None and quota > 0 and period:  # v1: -1 means no quota
            quotas.append(quota / period)
    return min(quotas, default=None)


def available_cores(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP,
                    affinity: int | None = None) -> int:
    """Cores this process may keep busy: its affinity, capped by a CPU quota (rounded up, at least 1)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cpu_quota(root, self_cgroup)
    return max(1, min(affinity, math.ceil(quota))) if quota else affinity


def memory_limit_headroom(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """Bytes left under the tightest cgroup memory limit (limit minus usage), or None where none is set."""
    left = []
    for folder in _cgroup_dirs(root, "memory", self_cgroup):
        for limit_name, usage_name in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
            # v2 writes "max" (not an int) and v1 a huge number where there is no limit
            if limit is not None and usage is not None and limit < 2 ** 60:
                left.append(max(0, limit - usage))
    return min(left, default=None)


def available_memory(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP,
                     machine_available: int | None = None) -> int:
    """Bytes new processes may still take: the machine's available memory, or less under a cgroup limit."""
    if machine_available is None:
        machine_available = psutil.virtual_memory().available
    headroom = memory_limit_headroom(root, self_cgroup)
    return machine_available if headroom is None else min(machine_available, headroom)
