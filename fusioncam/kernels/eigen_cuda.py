"""The element-wise gradient maps and principal-component projections on the GPU: the same array code as on the
CPU, run by CuPy on CuPy arrays (batched eigh by cuSOLVER), so nothing leaves the device."""

from __future__ import annotations

from fusioncam.kernels.projection_math import (
    elementwise_gradcam_map,
    first_component_projection,
    hirescam_map,
    kernel_pca_projection,
    layercam_map,
)

__all__ = [
    "hirescam_map",
    "elementwise_gradcam_map",
    "layercam_map",
    "first_component_projection",
    "kernel_pca_projection",
]
