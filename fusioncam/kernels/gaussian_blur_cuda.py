"""Group-CAM's blurred baseline on the GPU: a separable Gaussian blur (rows, then columns) with OpenCV's taps and border."""

from __future__ import annotations

import cupy as cp

from fusioncam.kernels.gaussian_blur_numpy import gaussian_taps
from fusioncam.kernels.upsample_cuda import EXACT_FLOAT_OPTIONS

__all__ = ["gaussian_blurred_images"]

# Reflect-101 (dcb|abcdefgh|gfe), repeated until the index falls inside: OpenCV's borderInterpolate.
_REFLECT_SOURCE = r"""
__device__ __forceinline__ int fc_reflect_101(int p, int len) {
    if (len == 1) return 0;
    while (p < 0 || p >= len) {
        p = p < 0 ? -p : 2 * (len - 1) - p;
    }
    return p;
}
"""

# out[plane, y, x] <- sum_t taps[t] * src[plane, y, reflect(x + t - r)] (stride 1), or along y (stride = width).
_BLUR_PASS = cp.ElementwiseKernel(
    "raw float32 src, raw float32 taps, int32 ksize, int32 height, int32 width, int32 along_rows",
    "float32 out",
    """
    const int plane_size = height * width;
    const long long base = (i / plane_size) * plane_size;
    const int pixel = (int)(i - base);
    const int y = pixel / width;
    const int x = pixel - y * width;
    const int radius = ksize / 2;
    float total = 0.0f;
    for (int t = 0; t < ksize; ++t) {
        const long long at = along_rows
            ? base + (long long)y * width + fc_reflect_101(x + t - radius, width)
            : base + (long long)fc_reflect_101(y + t - radius, height) * width + x;
        total += taps[t] * src[at];
    }
    out = total;
    """,
    "fusioncam_gaussian_blur_pass",
    preamble=_REFLECT_SOURCE,
    options=EXACT_FLOAT_OPTIONS,
)


def gaussian_blurred_images(images: cp.ndarray, ksize: int = 51, sigma: float = 50.0) -> cp.ndarray:
    """Every channel of images [N, C, H, W] blurred by a ksize x ksize Gaussian of std sigma, float32.

    Reflect-101 border (dcb|abcdefgh|gfe), reflected again as often as a small image needs; float32 sums.
    """
    images = cp.asarray(images, dtype=cp.float32, order="C")
    taps = cp.asarray(gaussian_taps(int(ksize), float(sigma)))
    if images.size == 0:
        return images.copy()
    height, width = images.shape[-2:]
    across = cp.empty_like(images)
    _BLUR_PASS(images, taps, int(ksize), height, width, 1, across)
    out = cp.empty_like(images)
    _BLUR_PASS(across, taps, int(ksize), height, width, 0, out)
    return out
