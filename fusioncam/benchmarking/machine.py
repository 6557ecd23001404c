"""What produced a benchmark result: the machine (CPU model and cores, GPUs with driver, CUDA runtime), the versions
of the software that ran, and the commit. `fusioncam bench` and the project's benchmarks/ record it in every JSON."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the checkout fusioncam runs from (an editable install's)


def first_line(command: list[str], cwd: Path | None = None) -> str | None:
    """The first line a command prints, or None when it is missing or fails (a fact we could not read)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=20, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict]:
    """Each visible NVIDIA GPU's name, memory and driver (nvidia-smi), [] where there is none."""
    if first_line(["nvidia-smi", "--query-gpu=count", "--format=csv,noheader"]) is None:
        return []
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                          capture_output=True, text=True, check=False, timeout=20)
    rows = [[part.strip() for part in row.split(",")] for row in done.stdout.strip().splitlines() if row.strip()]
    return [{"name": name, "memory": memory, "driver": driver} for name, memory, driver in rows]


def cuda_runtime() -> str | None:
    """The CUDA runtime version CuPy was built for, where CuPy is installed and sees a GPU."""
    try:
        import cupy

        version = cupy.cuda.runtime.runtimeGetVersion()
        return f"{version // 1000}.{version % 1000 // 10}"
    except Exception:  # no CuPy, no driver: not a CUDA machine
        return None


def machine_record() -> dict:
    """The machine (CPU model and cores, GPUs with driver, CUDA runtime), the versions of Python, NumPy, ONNX Runtime
    (and its providers) and fusioncam, the commit of the checkout fusioncam runs from (and whether its tracked files
    had changes; None outside a git checkout), and the time."""
    import numpy
    import onnxruntime

    import fusioncam

    commit = first_line(["git", "rev-parse", "HEAD"], cwd=SOURCE_ROOT) if (SOURCE_ROOT / ".git").exists() else None
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                            check=False, cwd=SOURCE_ROOT).stdout if commit else ""
    return {
        "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "gpus": gpus(), "cuda_runtime": cuda_runtime(),
        "platform": platform.platform(), "python": platform.python_version(), "numpy": numpy.__version__,
        "onnxruntime": onnxruntime.__version__, "onnxruntime_providers": onnxruntime.get_available_providers(),
        "fusioncam": getattr(fusioncam, "__version__", None), "commit": commit, "tree_modified": bool(status.strip()),
        "recorded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
