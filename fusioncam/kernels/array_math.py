"""The kernels whose array code is the same on the CPU and the GPU, written once for NumPy and CuPy alike.

Each function takes its array module from its arguments (`array_module`): NumPy arrays give NumPy results,
CuPy arrays CuPy results. The `*_numpy.py` and `*_cuda.py` modules export these functions under the same
names, so both KernelSets hold them; CuPy is never imported here, only recognised.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

XGRAD_EPS = 1e-7


def array_module(*arrays) -> ModuleType:
    """cupy if any of the arrays is a CuPy array, else numpy (cupy.get_array_module, without importing CuPy)."""
    if any(type(array).__module__.startswith("cupy") for array in arrays):
        import cupy

        return cupy
    return np


def target_rows(count: int, out, start: int):
    """out[start : start + count], refusing a write that would fall outside out's rows."""
    if start < 0 or start + count > out.shape[0]:
        raise ValueError(f"{count} masked inputs from row {start} do not fit in a batch of {out.shape[0]}")
    return out[start : start + count]


# ---------------------------------------------------------------- percentiles


def percentile_rule(count: int, theta: float) -> tuple[int, int, float]:
    """numpy's linear percentile of `count` sorted values: (lower index, upper index, gamma), as numpy computes them."""
    if not 0 <= theta <= 100:
        raise ValueError(f"Percentiles must be in the range [0, 100], got {theta}")
    virtual = (count - 1) * float(np.true_divide(theta, 100))
    lower = float(math.floor(virtual))
    if virtual >= count - 1:  # numpy then takes the last value and measures gamma from index -1
        lower = -1.0
        return count - 1, count - 1, virtual - lower
    return int(lower), int(lower) + 1, virtual - lower


def percentile_of_sorted(ordered, theta: float):
    """Per row of ordered [N, P] (each row sorted ascending): np.percentile(row, theta), bit for bit.

    numpy's float32 lerp, written with array operators only so that CuPy arrays work too.
    """
    lower, upper, gamma = percentile_rule(ordered.shape[1], float(theta))
    below, above = ordered[:, lower], ordered[:, upper]
    step = above - below
    if gamma >= 0.5:  # numpy's _lerp: exact at both ends
        return above - step * np.float32(1 - gamma)
    return below + step * np.float32(gamma)


# ---------------------------------------------------------------- maps_numpy / maps_cuda


def weighted_channel_sum(acts, weights):
    """sum_k weights[n, k] * acts[n, k] -> [N, h, w] float32, accumulated in float64 (at least float32)."""
    xp = array_module(acts, weights)
    n, k, h, w = acts.shape
    flat = xp.asarray(acts, dtype=xp.float64).reshape(n, k, h * w)
    summed = xp.matmul(xp.asarray(weights, dtype=xp.float64)[:, None, :], flat)
    return summed.reshape(n, h, w).astype(xp.float32)


def softmax(scores):
    """Max-subtracted softmax over the last axis of scores [N, K], in float64 (Score-CAM's channel weights)."""
    xp = array_module(scores)
    shifted = xp.asarray(scores, dtype=xp.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exps = xp.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def nonfinite_rows(*arrays):
    """[N] bool: True for image n where any of the arrays [N, ...] holds NaN or infinity in row n."""
    if not arrays:
        raise ValueError("nonfinite_rows needs at least one array")
    xp = array_module(*arrays)
    bad = xp.zeros(len(arrays[0]), dtype=bool)
    for array in arrays:
        array = xp.asarray(array)
        bad |= ~xp.isfinite(array.reshape(len(array), int(np.prod(array.shape[1:])))).all(axis=1)
    return bad


# ---------------------------------------------------------------- methods_numpy / methods_cuda


def group_bounds(channels: int, groups: int) -> list[tuple[int, int]]:
    """torch.chunk's split of `channels` into consecutive groups of ceil(channels / groups), the last one smaller.

    So there can be fewer than `groups`: K=512 gives 32 groups of 16, K=40 gives 20 of 2, K=100 gives 25 of 4,
    K=20 gives 20 of 1.
    """
    if channels < 1 or groups < 1:
        raise ValueError(f"need at least one channel and one group, got {channels} channels and {groups} groups")
    size = -(-channels // groups)
    return [(start, min(start + size, channels)) for start in range(0, channels, size)]


def gradcam_weights(grads):
    """Grad-CAM's w_k = mean over (i, j) of G_k: [N, K] float64 from gradients [N, K, h, w]."""
    xp = array_module(grads)
    return xp.asarray(grads, dtype=xp.float64).mean(axis=(2, 3))


def gradcam_plus_plus_weights(acts, grads):
    """Grad-CAM++'s w_k = sum_ij alpha * relu(g): [N, K] float64.

    alpha = g^2 / (2 g^2 + sum_ab A_k[a,b] * g^3), and 0 where that denominator is 0.
    """
    xp = array_module(acts, grads)
    a = xp.asarray(acts, dtype=xp.float64)
    g = xp.asarray(grads, dtype=xp.float64)
    squared = g * g
    denominator = 2 * squared + a.sum(axis=(2, 3), keepdims=True) * (squared * g)
    nonzero = denominator != 0
    alpha = xp.where(nonzero, squared / xp.where(nonzero, denominator, 1.0), 0.0)
    return (alpha * xp.maximum(g, 0)).sum(axis=(2, 3))


def xgradcam_weights(acts, grads):
    """XGrad-CAM's w_k = sum_ij (A_k / (sum_ab A_k + 1e-7)) * g: [N, K] float64."""
    xp = array_module(acts, grads)
    a = xp.asarray(acts, dtype=xp.float64)
    g = xp.asarray(grads, dtype=xp.float64)
    return (a / (a.sum(axis=(2, 3), keepdims=True) + XGRAD_EPS) * g).sum(axis=(2, 3))


def channel_percentiles(values, theta: float):
    """Per channel of values [N, K, h, w]: np.percentile(channel, theta) with linear interpolation, [N, K] float32."""
    xp = array_module(values)
    values = xp.asarray(values, dtype=xp.float32)
    n, k = values.shape[:2]
    return percentile_of_sorted(xp.sort(values.reshape(n * k, -1), axis=1), theta).reshape(n, k)


def union_channel_terms(grads, theta: float):
    """Union-CAM's relu(G') [N, K, h, w] float64 and 1 / sum_ij relu(G') [N, K] float64, 0 where that sum is 0.

    G' is G with each channel's values below its theta-th percentile (channel_percentiles) set to 0.
    """
    xp = array_module(grads)
    g = xp.asarray(grads, dtype=xp.float32)
    threshold = channel_percentiles(g, theta)[:, :, None, None]
    positive = xp.maximum(xp.where(g < threshold, xp.float32(0), g), xp.float32(0)).astype(xp.float64)
    totals = positive.sum(axis=(2, 3))
    scale = xp.where(totals > 0, 1.0 / xp.where(totals > 0, totals, 1.0), 0.0)
    return positive, scale


def group_activation_maps(acts, weights, groups: int):
    """Group-CAM's S_g = relu(sum_{k in g} w_k A_k) per group of consecutive channels (group_bounds): [N, G, h, w] float32."""
    xp = array_module(acts, weights)
    weighted = xp.asarray(acts, dtype=xp.float64) * xp.asarray(weights, dtype=xp.float64)[:, :, None, None]
    bounds = group_bounds(weighted.shape[1], groups)
    sums = xp.stack([weighted[:, start:stop].sum(axis=1) for start, stop in bounds], axis=1)
    return xp.maximum(sums, 0).astype(xp.float32)
