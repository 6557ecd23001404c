"""How many CPUs this process may really use: the cgroup's CPU quota and the scheduler affinity, not the node's cores.

A Kubernetes pod limited to 4 CPUs on a 64-core node sees 64 cores in os.cpu_count(); ONNX Runtime sized to 64
threads per session is then throttled by the kernel's CFS quota. The quota is read from the cgroup files:

- cgroup v2: `<root>/cpu.max` holds "QUOTA PERIOD" (microseconds) or "max PERIOD" (no limit);
- cgroup v1: `<root>/cpu/cpu.cfs_quota_us` and `cpu.cfs_period_us` (-1: no limit), also `<root>/cpu,cpuacct/...`.

The usable CPUs are min(ceil(quota / period), CPUs in os.sched_getaffinity(0)); the root is a parameter so a test
can point it at a simulated cgroup folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_FOLDERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs to size thread pools for, and where that number came from (for the start-up log line)."""

    cpus: int
    source: str


def _quota_v2(root: Path) -> tuple[float, str] | None:
    """(CPUs, source) from cgroup v2's cpu.max, or None when there is no file or no limit."""
    path = root / "cpu.max"
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


def _quota_v1(root: Path) -> tuple[float, str] | None:
    """(CPUs, source) from cgroup v1's cpu.cfs_quota_us / cpu.cfs_period_us, or None (no file, or -1: no limit)."""
    for folder in ("", *_V1_FOLDERS):
        base = root / folder if folder else root
        try:
            quota = int((base / "cpu.cfs_quota_us").read_text().strip())
            period = int((base / "cpu.cfs_period_us").read_text().strip())
        except (OSError, ValueError):
            continue
        if quota <= 0 or period <= 0:
            return None
        return quota / period, f"cgroup v1 {base}: cfs_quota_us {quota} per cfs_period_us {period}"
    return None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (os.sched_getaffinity where the platform has it, else os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_budget(cgroup_root: str | os.PathLike | None = None, affinity: int | None = None) -> CpuBudget:
    """The CPUs this process may use: the cgroup CPU quota (v2, else v1) rounded up, capped by the affinity count.

    A quota of 1.5 CPUs gives 2 (a partial CPU still runs a thread, throttled less than two full ones would be);
    no quota ("max", -1, or no cgroup files) gives the affinity count."""
    root = Path(CGROUP_ROOT if cgroup_root is None else cgroup_root)
    cores = affinity if affinity is not None else affinity_cpus()
    quota = _quota_v2(root) or _quota_v1(root)
    if quota is None:
        return CpuBudget(cores, f"{cores} CPUs in the scheduler affinity (no cgroup CPU quota under {root})")
    cpus, source = quota
    wanted = max(1, math.ceil(cpus - 1e-9))
    if wanted >= cores:
        return CpuBudget(cores, f"{cores} CPUs in the scheduler affinity ({source}: {cpus:g} CPUs)")
    return CpuBudget(wanted, f"{source} = {cpus:g} CPUs")
