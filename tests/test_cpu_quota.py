"""CPU threads from the container's CPU quota: simulated cgroup v2 and v1 folders, and the ONNX Runtime session that
cpu_backend builds from them (its intra-op thread count read back from the session)."""

from __future__ import annotations

import os

import pytest

from fusioncam import cpu_quota
from fusioncam.cpu_quota import affinity_cpus, cpu_budget


NO_PROC = "/nonexistent/proc/self/cgroup"  # no /proc/self/cgroup: only the root of the cgroup mount is read


def cgroup_v2(folder, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(text)
    return folder


def cgroup_v1(folder, quota: int, period: int, sub: str = "cpu,cpuacct"):
    base = folder / sub
    base.mkdir(parents=True, exist_ok=True)
    (base / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (base / "cpu.cfs_period_us").write_text(f"{period}\n")
    return folder


@pytest.mark.parametrize("text, affinity, cpus", [
    ("100000 100000\n", 64, 1),     # a pod limited to 1 CPU on a 64-core node
    ("400000 100000\n", 64, 4),
    ("150000 100000\n", 64, 2),     # 1.5 CPUs: two threads
    ("50000 100000\n", 64, 1),      # half a CPU still runs one thread
    ("800000 100000\n", 2, 2),      # the affinity caps a larger quota
    ("max 100000\n", 6, 6),         # no limit: the affinity count
])
def test_cgroup_v2_cpu_max(tmp_path, text, affinity, cpus):
    budget = cpu_budget(cgroup_v2(tmp_path, text), affinity=affinity, proc_cgroup=NO_PROC)
    assert budget.cpus == cpus
    assert budget.source.startswith("cgroup v2") == (cpus < affinity)  # the start-up log says where it came from


@pytest.mark.parametrize("quota, period, sub, cpus", [
    (100000, 100000, "cpu,cpuacct", 1),
    (300000, 100000, "cpu", 3),
    (-1, 100000, "cpu,cpuacct", 16),  # -1: no limit
])
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, sub, cpus):
    budget = cpu_budget(cgroup_v1(tmp_path, quota, period, sub), affinity=16, proc_cgroup=NO_PROC)
    assert budget.cpus == cpus
    if quota > 0:
        assert "cfs_quota_us" in budget.source


def test_no_cgroup_files_and_garbage_give_the_affinity_count(tmp_path):
    assert cpu_budget(tmp_path / "absent", affinity=5, proc_cgroup=NO_PROC).cpus == 5
    assert cpu_budget(cgroup_v2(tmp_path / "bad", "lots of cpus\n"), affinity=5, proc_cgroup=NO_PROC).cpus == 5
    assert "affinity" in cpu_budget(tmp_path / "absent", affinity=5, proc_cgroup=NO_PROC).source


def test_a_host_process_reads_its_own_cgroup_and_the_smallest_limit_of_its_ancestors(tmp_path):
    """On a host the process's cgroup is a path below the mount (a systemd slice): its own limit and its parents'
    apply, the smallest wins; a sibling's limit does not."""
    root = tmp_path / "v2"
    cgroup_v2(root, "max 100000\n")
    cgroup_v2(root / "system.slice", "300000 100000\n")
    cgroup_v2(root / "system.slice" / "fusioncam.service", "600000 100000\n")
    cgroup_v2(root / "other.slice", "100000 100000\n")
    proc = tmp_path / "cgroup-v2"
    proc.write_text("0::/system.slice/fusioncam.service\n")
    budget = cpu_budget(root, affinity=64, proc_cgroup=proc)
    assert budget.cpus == 3 and "system.slice/cpu.max" in budget.source
    cgroup_v2(root / "system.slice" / "fusioncam.service", "200000 100000\n")
    assert cpu_budget(root, affinity=64, proc_cgroup=proc).cpus == 2

    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "user.slice").mkdir(parents=True)
    cgroup_v1(v1, -1, 100000)
    leaf = v1 / "cpu,cpuacct" / "user.slice"
    (leaf / "cpu.cfs_quota_us").write_text("250000\n")
    (leaf / "cpu.cfs_period_us").write_text("100000\n")
    proc_v1 = tmp_path / "cgroup-v1"
    proc_v1.write_text("9:name=systemd:/user.slice\n4:cpu,cpuacct:/user.slice\n2:memory:/user.slice\n")
    assert cpu_budget(v1, affinity=64, proc_cgroup=proc_v1).cpus == 3  # 2.5 CPUs: three threads


def test_the_affinity_count_is_the_schedulers():
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert affinity_cpus() == expected


def test_a_quota_of_one_cpu_gives_onnx_runtime_one_thread(tmp_path, monkeypatch):
    """cpu_session reads the quota: a simulated 1-CPU cgroup gives sessions of 1 intra-op thread, FUSIONCAM_CPU_THREADS
    still overrides it."""
    from fusioncam.runtime.cpu_backend import CPU_THREADS_ENV, cpu_session
    from tests.support.tiny_models import save, tiny_classifier

    model = save(tiny_classifier(size=8), tmp_path / "m.onnx")
    monkeypatch.delenv(CPU_THREADS_ENV, raising=False)
    monkeypatch.setattr(cpu_quota, "CGROUP_ROOT", cgroup_v2(tmp_path / "cg", "100000 100000\n"))
    monkeypatch.setattr(cpu_quota, "affinity_cpus", lambda: 64)
    monkeypatch.setattr(cpu_quota, "PROC_SELF_CGROUP", tmp_path / "no-proc-cgroup")
    assert cpu_session(model).get_session_options().intra_op_num_threads == 1
    monkeypatch.setattr(cpu_quota, "CGROUP_ROOT", cgroup_v2(tmp_path / "cg4", "400000 100000\n"))
    assert cpu_session(model).get_session_options().intra_op_num_threads == 4
    monkeypatch.setenv(CPU_THREADS_ENV, "3")
    assert cpu_session(model).get_session_options().intra_op_num_threads == 3
