"""Turn "auto" / "cpu" / "cuda" / "cuda:1" into a concrete device, with clear errors instead of fallbacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import DeviceError

log = logging.getLogger("fusioncam")


@dataclass(frozen=True)
class Device:
    """A concrete device: kind "cpu" or "cuda", and the GPU ordinal."""

    kind: str
    index: int = 0

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def _parse(device: str) -> Device | None:
    """Device from its text; None for auto."""
    text = device.strip().lower()
    if text == "auto":
        return None
    if text == "cpu":
        return Device("cpu")
    if text == "cuda":
        return Device("cuda", 0)
    if text.startswith("cuda:") and text[5:].isdigit():
        return Device("cuda", int(text[5:]))
    raise DeviceError(f"unknown device '{device}': use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def cuda_unavailable_reason(index: int = 0) -> str | None:
    """Why CUDA cannot be used (None when onnxruntime-gpu, CuPy and GPU `index` are all there)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device
        return f"CuPy sees no usable GPU ({exc})"
    if index >= count:
        return f"GPU {index} requested but only {count} GPU(s) visible"
    return None


def select_device(device: str = "auto") -> Device:
    """Resolve the requested device; "auto" picks CUDA when usable and logs which one it chose."""
    parsed = _parse(device)
    if parsed is None:
        reason = cuda_unavailable_reason(0)
        chosen = Device("cpu") if reason else Device("cuda", 0)
        log.info("fusioncam device auto -> %s%s", chosen, f" ({reason})" if reason else "")
        return chosen
    if parsed.kind == "cuda":
        reason = cuda_unavailable_reason(parsed.index)
        if reason:
            raise DeviceError(f"device '{device}' requested but CUDA is not usable: {reason}. Use device='cpu' or 'auto'.")
    return parsed
