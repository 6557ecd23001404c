"""Gaussian blur of image batches on the GPU: OpenCV's separable float32 filter, reflect-101 borders, in CuPy."""

from __future__ import annotations

import functools

import cupy as cp
import cv2
import numpy as np

from fusioncam.kernels.upsample_cuda import EXACT_FLOAT_OPTIONS

__all__ = ["gaussian_blur"]

# OpenCV's BORDER_REFLECT_101 index (gfedcb|abcdefgh|gfedcba), repeated while a wide kernel still falls outside.
REFLECT_101_SOURCE = r"""
__device__ __forceinline__ int fc_reflect_101(int p, const int n) {
    if (n == 1) return 0;
    while (p < 0 || p >= n) p = p < 0 ? -p : 2 * (n - 1) - p;
    return p;
}
"""

# out [planes, H, W] <- 1-D filter of src along x (along_rows) or y, one thread per output pixel.
_FILTER_LINE = cp.ElementwiseKernel(
    "raw float32 src, raw float32 weights, int32 radius, int32 height, int32 width, bool along_rows",
    "float32 out",
    """
    const long long plane = (long long)height * width;
    const long long base = (i / plane) * plane;
    const int pixel = (int)(i - base);
    const int y = pixel / width;
    const int x = pixel - y * width;
    float sum = 0.0f;
    for (int k = -radius; k <= radius; ++k) {
        const int source = along_rows ? y * width + fc_reflect_101(x + k, width)
                                      : fc_reflect_101(y + k, height) * width + x;
        sum += weights[k + radius] * src[base + source];
    }
    out = sum;
    """,
    "fusioncam_gaussian_line",
    preamble=REFLECT_101_SOURCE,
    options=EXACT_FLOAT_OPTIONS,
)


@functools.lru_cache(maxsize=8)
def _weights(ksize: int, sigma: float, device_id: int) -> cp.ndarray:
    """OpenCV's float32 Gaussian weights on one GPU."""
    return cp.asarray(cv2.getGaussianKernel(ksize, sigma, cv2.CV_32F)[:, 0], dtype=cp.float32)


def gaussian_blur(images: cp.ndarray, ksize: int = 51, sigma: float = 50.0) -> cp.ndarray:
    """Each [H, W] plane of images [..., H, W] blurred with a ksize x ksize Gaussian (float32 weights from
    cv2.getGaussianKernel), rows then columns, reflect-101 borders: cv2.GaussianBlur(plane, (ksize, ksize), sigma)."""
    images = cp.ascontiguousarray(images, dtype=cp.float32)
    height, width = images.shape[-2:]
    weights = _weights(int(ksize), float(sigma), cp.cuda.Device().id)
    sizes = (np.int32(ksize // 2), np.int32(height), np.int32(width))
    rows = cp.empty_like(images)
    _FILTER_LINE(images, weights, *sizes, np.bool_(True), rows)
    out = cp.empty_like(images)
    _FILTER_LINE(rows, weights, *sizes, np.bool_(False), out)
    return out
