"""pytorch-grad-cam's arithmetic where it departs from the methods' authors', written once for NumPy and CuPy.

The `compat="pytorch-grad-cam"` option (runtime/methods/compat.py) uses these instead of the default kernels:
Grad-CAM++ with pytorch-grad-cam's 1e-6 in alpha's denominator, and Score-CAM masks upsampled with
align_corners=True (`nn.UpsamplingBilinear2d`) and normalised by (max - min + 1e-8). Like array_math, each
function takes its array module from its arguments, so the CPU and the CUDA backends run the same code.
"""

from __future__ import annotations

from fusioncam.kernels.array_math import array_module, target_rows
from fusioncam.kernels.upsample_numpy import axis_table, chunk_slices

PLUS_PLUS_EPS = 1e-6  # pytorch-grad-cam GradCAMPlusPlus: added to alpha's denominator
MASK_SPAN_EPS = 1e-8  # pytorch-grad-cam ScoreCAM: added to each upsampled map's max - min


def plus_plus_weights(acts, grads):
    """pytorch-grad-cam's Grad-CAM++ w_k = sum_ij alpha * relu(g): [N, K] float64.

    alpha = g^2 / (2 g^2 + sum_ab A_k[a,b] * g^3 + 1e-6), and 0 where g == 0 (its `np.where(grads != 0, aij, 0)`).
    """
    xp = array_module(acts, grads)
    a = xp.asarray(acts, dtype=xp.float64)
    g = xp.asarray(grads, dtype=xp.float64)
    squared = g * g
    alpha = squared / (2 * squared + a.sum(axis=(2, 3), keepdims=True) * (squared * g) + PLUS_PLUS_EPS)
    alpha = xp.where(g != 0, alpha, 0.0)
    return (alpha * xp.maximum(g, 0)).sum(axis=(2, 3))


def _device_table(in_size: int, out_size: int, xp):
    """upsample_numpy's corner-aligned axis table as arrays of xp: lower, upper, frac."""
    table = axis_table(in_size, out_size, align_corners=True)
    return xp.asarray(table.lower), xp.asarray(table.upper), xp.asarray(table.frac)


def aligned_upsample(maps, out_hw: tuple[int, int]):
    """Bilinear resize of maps [M, h, w] to [M, H, W] float32 with align_corners=True (x lerp, then y lerp, in float32,
    the arithmetic of upsample_numpy with corner-aligned source indices)."""
    xp = array_module(maps)
    maps = xp.asarray(maps, dtype=xp.float32)
    row_lower, row_upper, row_frac = _device_table(int(maps.shape[-2]), int(out_hw[0]), xp)
    col_lower, col_upper, col_frac = _device_table(int(maps.shape[-1]), int(out_hw[1]), xp)
    left = maps[:, :, col_lower]
    wide = left + col_frac * (maps[:, :, col_upper] - left)
    top = wide[:, row_lower]
    return top + row_frac[:, None] * (wide[:, row_upper] - top)


def aligned_min_max(acts, out_hw: tuple[int, int]):
    """Min and max [N, K] float32 of every channel's corner-aligned upsampled map, a bounded chunk of maps at a time."""
    xp = array_module(acts)
    acts = xp.asarray(acts, dtype=xp.float32)
    n, k, h, w = acts.shape
    flat = acts.reshape(n * k, h, w)
    mins = xp.empty(n * k, dtype=xp.float32)
    maxs = xp.empty(n * k, dtype=xp.float32)
    for part in chunk_slices(n * k, out_hw):
        block = aligned_upsample(flat[part], out_hw)
        mins[part] = block.min(axis=(1, 2))
        maxs[part] = block.max(axis=(1, 2))
    return mins.reshape(n, k), maxs.reshape(n, k)


def write_aligned_channel_masked_inputs(images, acts, mins, maxs, image_index, channel_index, out, start: int = 0) -> None:
    """out[start + j] = images[n] * (up(A) - min) / (max - min + 1e-8) for (n, k) = (image_index[j], channel_index[j]),
    up corner-aligned and mins/maxs from aligned_min_max (pytorch-grad-cam's Score-CAM inputs); float32 math, rounded
    once to out's dtype. The same arguments as the kernels' write_channel_masked_inputs, so the sweep takes either."""
    xp = array_module(images, acts, out)
    images = xp.asarray(images, dtype=xp.float32)
    acts = xp.asarray(acts, dtype=xp.float32)
    image_index = xp.asarray(image_index, dtype=xp.int64)
    channel_index = xp.asarray(channel_index, dtype=xp.int64)
    target = target_rows(int(image_index.shape[0]), out, start)
    out_hw = (int(out.shape[-2]), int(out.shape[-1]))
    for part in chunk_slices(int(target.shape[0]), out_hw):
        n, k = image_index[part], channel_index[part]
        low = xp.asarray(mins, dtype=xp.float32)[n, k][:, None, None]
        span = xp.asarray(maxs, dtype=xp.float32)[n, k][:, None, None] - low + xp.float32(MASK_SPAN_EPS)
        masks = (aligned_upsample(acts[n, k], out_hw) - low) / span
        target[part] = images[n] * masks[:, None]


def lapack_centered_projection(maps):
    """pytorch-grad-cam's get_2d_projection: per image, the channel-centred float32 [h*w, K] matrix X, NumPy's (LAPACK
    gesdd) SVD, X @ VT[0] -> [N, h, w] float32, on maps' device.

    The first singular vector's sign is whatever LAPACK returns (a ReLU follows, so it decides the map); cuSOLVER's can
    differ, so on the GPU this one step copies the [N, K, h, w] maps to the host and back to reproduce it. The reduced
    SVD (full_matrices=False, 3x faster at [49, 512]) gives the same first row of VT: gesdd builds the same leading
    rows of its orthogonal factor either way (checked on 90 random matrices of six shapes, and by the parity tests).
    """
    import numpy as np

    xp = array_module(maps)
    host = maps.get() if xp is not np else np.asarray(maps)
    host = np.where(np.isnan(host), 0, host).astype(np.float32)
    projections = []
    for activations in host:
        matrix = activations.reshape(activations.shape[0], -1).transpose()
        matrix = matrix - matrix.mean(axis=0)
        _, _, vt = np.linalg.svd(matrix, full_matrices=False)  # VT's first row is LAPACK's full_matrices=True one
        projections.append((matrix @ vt[0, :]).reshape(activations.shape[1:]))
    return xp.asarray(np.float32(projections))
