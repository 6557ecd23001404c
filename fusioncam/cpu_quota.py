"""How many CPUs this process may really use: the cgroup's CPU quota and the scheduler affinity, not the node's cores.

A Kubernetes pod limited to 4 CPUs on a 64-core node sees 64 cores in os.cpu_count(); ONNX Runtime sized to 64
threads per session is then throttled by the kernel's CFS quota. The quota is read from the cgroup files:

- cgroup v2: `cpu.max` holds "QUOTA PERIOD" (microseconds) or "max PERIOD" (no limit);
- cgroup v1: `cpu.cfs_quota_us` and `cpu.cfs_period_us` (-1: no limit), under `<root>/cpu` or `<root>/cpu,cpuacct`.

Inside a container the process's cgroup is the root of the mount; on a host it is the path in /proc/self/cgroup
(a systemd slice with CPUQuota=, for instance). Both are read, with every ancestor of the process's cgroup (a
parent's limit binds its children too), and the smallest limit wins. The usable CPUs are min(ceil(quota / period),
CPUs in os.sched_getaffinity(0)). The cgroup root and /proc/self/cgroup are parameters so a test can point them at a
simulated cgroup folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_V1_FOLDERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu", "")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs to size thread pools for, and where that number came from (for the start-up log line)."""

    cpus: int
    source: str


def _own_cgroups(proc_cgroup: Path) -> tuple[str, str]:
    """(the v2 path, the v1 cpu controller's path) of this process, from /proc/self/cgroup ("/" when not listed)."""
    v2 = v1 = "/"
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _with_ancestors(base: Path, path: str) -> list[Path]:
    """base/path and each of its parents up to base (a cgroup path in /proc/self/cgroup is absolute)."""
    parts = [part for part in path.split("/") if part and part != ".."]
    return [base.joinpath(*parts[:length]) for length in range(len(parts), -1, -1)]


def _quota_v2(folder: Path) -> tuple[float, str] | None:
    """(CPUs, source) from cgroup v2's cpu.max in `folder`, or None when there is no file or no limit."""
    path = folder / "cpu.max"
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period, f"cgroup v2 {path}: {quota} us per {period} us"


def _quota_v1(folder: Path) -> tuple[float, str] | None:
    """(CPUs, source) from cgroup v1's cpu.cfs_quota_us / cpu.cfs_period_us in `folder`, or None (no file, or -1)."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text().strip())
        period = int((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period, f"cgroup v1 {folder}: cfs_quota_us {quota} per cfs_period_us {period}"


def cgroup_quota(cgroup_root: Path, proc_cgroup: Path) -> tuple[float, str] | None:
    """The smallest CPU quota (CPUs, source) over the process's cgroups and their ancestors, v2 and v1; None if none."""
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    found = [_quota_v2(folder) for path in dict.fromkeys((v2_path, "/"))
             for folder in _with_ancestors(cgroup_root, path)]
    found += [_quota_v1(folder) for controller in _V1_FOLDERS for path in dict.fromkeys((v1_path, "/"))
              for folder in _with_ancestors(cgroup_root / controller if controller else cgroup_root, path)]
    limits = [quota for quota in found if quota is not None]
    return min(limits, key=lambda quota: quota[0]) if limits else None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (os.sched_getaffinity where the platform has it, else os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_budget(cgroup_root: str | os.PathLike | None = None, affinity: int | None = None,
               proc_cgroup: str | os.PathLike | None = None) -> CpuBudget:
    """The CPUs this process may use: the cgroup CPU quota (the smallest found) rounded up, capped by the affinity.

    A quota of 1.5 CPUs gives 2 (a partial CPU still runs a thread, throttled less than two full ones would be);
    no quota ("max", -1, or no cgroup files) gives the affinity count."""
    root = Path(CGROUP_ROOT if cgroup_root is None else cgroup_root)
    cores = affinity if affinity is not None else affinity_cpus()
    quota = cgroup_quota(root, Path(PROC_SELF_CGROUP if proc_cgroup is None else proc_cgroup))
    if quota is None:
        return CpuBudget(cores, f"{cores} CPUs in the scheduler affinity (no cgroup CPU quota under {root})")
    cpus, source = quota
    wanted = max(1, math.ceil(cpus - 1e-9))
    if wanted >= cores:
        return CpuBudget(cores, f"{cores} CPUs in the scheduler affinity ({source}: {cpus:g} CPUs)")
    return CpuBudget(wanted, f"{source} = {cpus:g} CPUs")
