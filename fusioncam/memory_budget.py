"""What the machine can hold: batch sizes and input sizes are checked against free memory BEFORE allocating.

A request that cannot fit (`batch_size=10**7`, `input_size=(100000, 100000)`) gets an `InputError` saying how much
it needs, how much is free and the largest value that fits, instead of a `MemoryError` traceback from deep inside
NumPy, PyTorch or ONNX Runtime. The estimates are lower bounds (the buffers fusioncam itself allocates, not the
model's activations), and at most half of the free memory is promised to them, leaving the rest to the model.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

SHARE_OF_FREE_MEMORY = 0.5
# Per masked row of the scorer: its float32 input [3, H, W] and the float32 mask [H, W] written into it.
SCORER_BYTES_PER_PIXEL = 3 * 4 + 4
# Per example image of an export: the float32 input [3, H, W] and at least one float32 feature map of its size.
EXPORT_BYTES_PER_PIXEL = 3 * 4 + 4
EXPORT_EXAMPLE_IMAGES = 2  # export_torch traces the model with a batch of 2


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is no /proc)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (a container's), in bytes; None when unlimited or unknown."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_host_bytes() -> int | None:
    """Memory this process can still allocate on the host, in bytes (None where it cannot be told)."""
    found = [value for value in (_meminfo_available(), _cgroup_available()) if value is not None]
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def available_gpu_bytes(index: int) -> int | None:
    """Free memory on CUDA GPU `index` (CuPy's memGetInfo), None without CuPy or a GPU."""
    try:
        import cupy

        with cupy.cuda.Device(index):
            free, _total = cupy.cuda.runtime.memGetInfo()
        return int(free)
    except Exception:  # no CuPy, no driver, no such GPU: the backend reports those itself
        return None


def _gib(count: float) -> str:
    """Bytes as a short human figure."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count / 2**10:.1f} KiB"


def largest_count(bytes_each: int, free: int) -> int:
    """How many items of bytes_each fit in the promised share of `free` bytes."""
    return int(free * SHARE_OF_FREE_MEMORY) // max(bytes_each, 1)


def check_batch_fits(batch_size: int, input_size: tuple[int, int], device_kind: str = "cpu", device_index: int = 0,
                     free: int | None = None) -> None:
    """Refuse a scorer batch whose input buffer and masks alone exceed half of the free host (or GPU) memory."""
    if free is None:
        free = available_gpu_bytes(device_index) if device_kind == "cuda" else available_host_bytes()
    if free is None:
        return
    height, width = input_size
    per_row = SCORER_BYTES_PER_PIXEL * height * width
    needed = batch_size * per_row
    if needed > free * SHARE_OF_FREE_MEMORY:
        where = f"GPU {device_index}" if device_kind == "cuda" else "this machine"
        raise InputError(
            f"batch_size {batch_size} does not fit: at {height}x{width} each masked row needs at least "
            f"{_gib(per_row)} (input and mask), {_gib(needed)} in all, and {where} has {_gib(free)} free; "
            f"the largest batch_size that fits is {largest_count(per_row, free)} (fusioncam uses at most half of the "
            f"free memory for its buffers and leaves the rest to the model)"
        )


def check_input_size_fits(input_size: tuple[int, int], free: int | None = None) -> None:
    """Refuse an export input size whose example batch alone exceeds half of the free host memory."""
    free = available_host_bytes() if free is None else free
    if free is None:
        return
    height, width = input_size
    per_image = EXPORT_BYTES_PER_PIXEL * height * width
    needed = EXPORT_EXAMPLE_IMAGES * per_image
    if needed > free * SHARE_OF_FREE_MEMORY:
        pixels = largest_count(EXPORT_EXAMPLE_IMAGES * EXPORT_BYTES_PER_PIXEL, free)
        side = int(pixels ** 0.5)
        raise InputError(
            f"input_size {height}x{width} does not fit: exporting traces {EXPORT_EXAMPLE_IMAGES} images of that size, "
            f"at least {_gib(needed)} for their inputs and one feature map, and this machine has {_gib(free)} free; "
            f"the largest that fits is about {pixels:,} pixels (e.g. {side}x{side}), and the model's own activations "
            f"need more"
        )
