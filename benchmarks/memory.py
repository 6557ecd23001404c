"""Peak resident memory of a code block, sampled from /proc (native allocations included)."""

from __future__ import annotations

from fusioncam.benchmarking.resident import gpu_used_bytes, peak_resident, resident_bytes  # noqa: F401


def gpu_peak_bytes() -> int | None:
    """Peak bytes held by CuPy's memory pool (None without CuPy); ONNX Runtime's arena is reported separately."""
    try:
        import cupy
    except ImportError:
        return None
    return int(cupy.get_default_memory_pool().total_bytes())
