"""Peak resident memory of a code block, sampled from /proc (native allocations included), and GPU memory in use."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

PAGE = 4096


def resident_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


@contextmanager
def peak_resident(interval: float = 0.002) -> Iterator[dict]:
    """Yield a dict that holds, after the block, the peak RSS and its rise over the start (bytes)."""
    result = {"start": resident_bytes(), "peak": resident_bytes()}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            result["peak"] = max(result["peak"], resident_bytes())
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result["peak"] = max(result["peak"], resident_bytes())
        result["rise"] = result["peak"] - result["start"]


def gpu_used_bytes() -> int | None:
    """Device memory in use on the current GPU (total - free): ONNX Runtime's arena, CuPy's pool and the CUDA
    contexts together, as the driver sees it (None without CuPy)."""
    try:
        import cupy
    except ImportError:
        return None
    free, total = cupy.cuda.runtime.memGetInfo()
    return int(total - free)
