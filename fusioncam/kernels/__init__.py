"""Image-space kernels, twice with one interface: `numpy_kernels` (CPU) and `cuda_kernels()` (CuPy, GPU).

Both sets hold the functions named in `KernelSet`, with the same arguments, docstrings and results;
the CUDA set takes and returns CuPy arrays and is imported only when asked for. A kernel whose array code
is the same on both is written once, in `array_math`, and exported by the numpy and the cuda module alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Callable

from fusioncam.errors import DeviceError
from fusioncam.kernels import maps_numpy, masks_numpy, upsample_numpy
from fusioncam.kernels import blend_numpy
from fusioncam.kernels import gaussian_blur_numpy, methods_numpy

__all__ = ["KernelSet", "numpy_kernels", "cuda_kernels"]


@dataclass(frozen=True)
class KernelSet:
    """One backend's kernels; see the numpy or cuda module of each name for its contract."""

    bilinear_weights: Callable
    upsample: Callable
    upsampled_min_max: Callable
    write_channel_masked_inputs: Callable
    write_map_masked_inputs: Callable
    weighted_channel_sum: Callable
    normalize: Callable
    relu_upsample_normalize: Callable
    percentile_denoise: Callable
    softmax: Callable
    weighted_pair: Callable
    similarity_fusion: Callable
    nonfinite_rows: Callable
    write_blended_inputs: Callable
    gradcam_weights: Callable
    gradcam_plus_plus_weights: Callable
    xgradcam_weights: Callable
    channel_percentiles: Callable
    union_gradient_map: Callable
    group_activation_maps: Callable
    write_group_blended_inputs: Callable
    weighted_group_masks: Callable
    gaussian_blurred_images: Callable

    @classmethod
    def from_modules(cls, *modules: ModuleType) -> KernelSet:
        """Collect each kernel by name from the module that lists it in `__all__`."""
        found = {name: getattr(module, name) for module in modules for name in module.__all__}
        return cls(**{field.name: found[field.name] for field in fields(cls)})


numpy_kernels = KernelSet.from_modules(upsample_numpy, masks_numpy, maps_numpy, blend_numpy,
                                       methods_numpy, gaussian_blur_numpy)


@functools.cache
def cuda_kernels() -> KernelSet:
    """The CuPy kernels; raises DeviceError when CuPy is not installed or sees no CUDA GPU."""
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(
            f"the CUDA kernels need CuPy, which could not be imported ({exc}); "
            "install the wheel matching your CUDA driver, e.g. pip install cupy-cuda12x or cupy-cuda13x"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when no driver or GPU, RuntimeError when libraries are missing
        raise DeviceError(f"CuPy cannot reach a CUDA GPU ({exc}); run on the CPU instead") from exc
    if count == 0:
        raise DeviceError("CuPy sees no CUDA GPU (device count 0); run on the CPU instead")
    from fusioncam.kernels import maps_cuda, masks_cuda, upsample_cuda
    from fusioncam.kernels import blend_cuda
    from fusioncam.kernels import gaussian_blur_cuda, methods_cuda

    return KernelSet.from_modules(upsample_cuda, masks_cuda, maps_cuda, blend_cuda,
                                  methods_cuda, gaussian_blur_cuda)
