"""Bilinear upsampling on the GPU with CuPy, bit-for-bit the arithmetic of upsample_numpy.

Kernels are compiled with --fmad=false: no multiply-add is fused, so every float32 operation
rounds as NumPy's does, and the masks built from these values match the CPU ones.
"""

from __future__ import annotations

import functools

import cupy as cp
import numpy as np

from fusioncam.kernels import upsample_numpy

__all__ = ["upsample", "upsampled_min_max"]  # bilinear_weights: public, not a KernelSet member

# No fused multiply-add: keeps a + t * (b - a) rounded exactly as NumPy rounds it.
EXACT_FLOAT_OPTIONS = ("--fmad=false",)

# Device code shared by every kernel that interpolates on the fly.
BILINEAR_SOURCE = r"""
// a + t * (b - a): exact at t = 0 and for a == b, so a constant map stays constant.
__device__ __forceinline__ float fc_lerp(float a, float b, float t) {
    return a + t * (b - a);
}

// Value at output pixel (y, x) of the upsampled map whose low-resolution values start at map[base].
template <class Map, class Index, class Frac>
__device__ __forceinline__ float fc_bilinear(
        const Map& map, long long base, int in_w,
        const Index& row_lower, const Index& row_upper, const Frac& row_frac,
        const Index& col_lower, const Index& col_upper, const Frac& col_frac,
        int y, int x) {
    const long long top = base + (long long)row_lower[y] * in_w;
    const long long bottom = base + (long long)row_upper[y] * in_w;
    const int left = col_lower[x];
    const int right = col_upper[x];
    const float t = col_frac[x];
    const float upper_row = fc_lerp(map[top + left], map[top + right], t);
    const float lower_row = fc_lerp(map[bottom + left], map[bottom + right], t);
    return fc_lerp(upper_row, lower_row, row_frac[y]);
}
"""

TABLE_PARAMS = (
    "raw int32 row_lower, raw int32 row_upper, raw float32 row_frac, "
    "raw int32 col_lower, raw int32 col_upper, raw float32 col_frac"
)
TABLE_ARGS = "row_lower, row_upper, row_frac, col_lower, col_upper, col_frac"

# out [maps, H, W] <- up(maps [maps, h, w]), one thread per output pixel.
_UPSAMPLE = cp.ElementwiseKernel(
    f"raw float32 maps, {TABLE_PARAMS}, int32 in_h, int32 in_w, int32 out_w, int64 plane",
    "float32 out",
    f"""
    const long long map_index = i / plane;
    const int pixel = (int)(i - map_index * plane);
    const int y = pixel / out_w;
    const int x = pixel - y * out_w;
    out = fc_bilinear(maps, map_index * in_h * in_w, in_w, {TABLE_ARGS}, y, x);
    """,
    "fusioncam_upsample",
    preamble=BILINEAR_SOURCE,
    options=EXACT_FLOAT_OPTIONS,
)

# mins[m], maxs[m] <- extremes of up(acts[m]): one block per map, threads stride over its pixels.
_MIN_MAX_SOURCE = BILINEAR_SOURCE + r"""
// NaN-propagating min and max, as numpy.min and numpy.max.
__device__ __forceinline__ float fc_min(float a, float b) { return (isnan(a) || a < b) ? a : b; }
__device__ __forceinline__ float fc_max(float a, float b) { return (isnan(a) || a > b) ? a : b; }

extern "C" __global__ void fusioncam_upsampled_min_max(
        const float* acts,
        const int* row_lower, const int* row_upper, const float* row_frac,
        const int* col_lower, const int* col_upper, const float* col_frac,
        const int in_h, const int in_w, const int out_h, const int out_w,
        float* mins, float* maxs) {
    extern __shared__ float shared[];  // [2 * blockDim.x]: block minima, then block maxima
    float* block_min = shared;
    float* block_max = shared + blockDim.x;
    const long long base = (long long)blockIdx.x * in_h * in_w;
    const int pixels = out_h * out_w;
    float low = __int_as_float(0x7f800000);  // +inf
    float high = -low;
    for (int pixel = threadIdx.x; pixel < pixels; pixel += blockDim.x) {
        const int y = pixel / out_w;
        const int x = pixel - y * out_w;
        const float value = fc_bilinear(acts, base, in_w, row_lower, row_upper, row_frac,
                                        col_lower, col_upper, col_frac, y, x);
        low = fc_min(low, value);
        high = fc_max(high, value);
    }
    block_min[threadIdx.x] = low;
    block_max[threadIdx.x] = high;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            block_min[threadIdx.x] = fc_min(block_min[threadIdx.x], block_min[threadIdx.x + stride]);
            block_max[threadIdx.x] = fc_max(block_max[threadIdx.x], block_max[threadIdx.x + stride]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        mins[blockIdx.x] = block_min[0];
        maxs[blockIdx.x] = block_max[0];
    }
}
"""
_MIN_MAX = cp.RawKernel(_MIN_MAX_SOURCE, "fusioncam_upsampled_min_max", options=EXACT_FLOAT_OPTIONS)
_MIN_MAX_THREADS = 256  # a power of two: the tree reduction halves it


@functools.lru_cache(maxsize=64)
def _device_table(in_size: int, out_size: int, device_id: int) -> tuple[cp.ndarray, cp.ndarray, cp.ndarray]:
    """upsample_numpy's axis table for one axis, on one GPU: int32 lower, int32 upper, float32 frac."""
    table = upsample_numpy.axis_table(in_size, out_size)
    return (
        cp.asarray(table.lower, dtype=cp.int32),
        cp.asarray(table.upper, dtype=cp.int32),
        cp.asarray(table.frac, dtype=cp.float32),
    )


def device_tables(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[cp.ndarray, ...]:
    """The six table arrays the kernels read (rows then columns), cached per size and device."""
    device_id = cp.cuda.Device().id
    rows = _device_table(int(in_hw[0]), int(out_hw[0]), device_id)
    cols = _device_table(int(in_hw[1]), int(out_hw[1]), device_id)
    return rows + cols


def interpolation_args(maps_shape: tuple[int, ...], out_hw: tuple[int, int]) -> tuple:
    """A kernel's arguments from TABLE_PARAMS on, for maps [N, C, h, w] interpolated to out_hw on the fly.

    Matches `{TABLE_PARAMS}, int32 C, int32 in_h, int32 in_w, int32 out_w, int64 plane` (plane = H * W).
    """
    _, maps_per_image, h, w = maps_shape
    height, width = int(out_hw[0]), int(out_hw[1])
    return (*device_tables((h, w), (height, width)), maps_per_image, h, w, width, height * width)


def bilinear_weights(in_size: int, out_size: int) -> cp.ndarray:
    """The [out_size, in_size] float32 matrix of PyTorch's bilinear resize along one axis (align_corners=False).

    Row r holds 1 - frac at the lower source index and frac at the upper one; `up(A) = Wh @ A @ Ww.T`.
    """
    return cp.asarray(upsample_numpy.bilinear_weights(in_size, out_size))


def upsample(maps: cp.ndarray, out_hw: tuple[int, int]) -> cp.ndarray:
    """Bilinear resize of maps [..., h, w] to [..., H, W] float32 (half-pixel centres, no antialias)."""
    maps = cp.asarray(maps, dtype=cp.float32, order="C")
    *lead, h, w = maps.shape
    height, width = int(out_hw[0]), int(out_hw[1])
    out = cp.empty((*lead, height, width), dtype=cp.float32)
    _UPSAMPLE(maps, *device_tables((h, w), (height, width)), h, w, width, height * width, out)
    return out


def upsampled_min_max(acts: cp.ndarray, out_hw: tuple[int, int]) -> tuple[cp.ndarray, cp.ndarray]:
    """Min and max [N, K] float32 of every channel's upsampled map, never materialising all of them at once.

    Bilinear upsampling need not reach the low-resolution extremes, so Score-CAM's norm needs these.
    """
    acts = cp.asarray(acts, dtype=cp.float32, order="C")
    n, k, h, w = acts.shape
    mins = cp.empty((n, k), dtype=cp.float32)
    maxs = cp.empty((n, k), dtype=cp.float32)
    if n * k == 0:
        return mins, maxs
    height, width = int(out_hw[0]), int(out_hw[1])
    args = (acts, *device_tables((h, w), (height, width)))
    sizes = tuple(np.int32(v) for v in (h, w, height, width))
    _MIN_MAX(
        (n * k,),
        (_MIN_MAX_THREADS,),
        (*args, *sizes, mins, maxs),
        shared_mem=2 * _MIN_MAX_THREADS * np.dtype(np.float32).itemsize,
    )
    return mins, maxs
