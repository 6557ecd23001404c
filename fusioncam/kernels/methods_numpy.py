"""Channel weights and maps of Grad-CAM++, XGrad-CAM, Union-CAM and Group-CAM on the CPU (the page's "Related methods")."""

from __future__ import annotations

import numpy as np

from fusioncam.kernels.maps_numpy import percentile_of_sorted
from fusioncam.kernels.masks_numpy import _check_rows
from fusioncam.kernels.upsample_numpy import axis_table, chunk_length, upsample, upsample_block

__all__ = [
    "gradcam_weights",
    "gradcam_plus_plus_weights",
    "xgradcam_weights",
    "channel_percentiles",
    "union_gradient_map",
    "group_activation_maps",
    "write_group_blended_inputs",
    "weighted_group_masks",
]

XGRAD_EPS = 1e-7


def group_bounds(channels: int, groups: int) -> list[tuple[int, int]]:
    """torch.chunk's split of `channels` into consecutive groups of ceil(channels / groups), the last one smaller.

    So there can be fewer than `groups`: K=512 gives 32 groups of 16, K=40 gives 20 of 2, K=100 gives 25 of 4,
    K=20 gives 20 of 1.
    """
    if channels < 1 or groups < 1:
        raise ValueError(f"need at least one channel and one group, got {channels} channels and {groups} groups")
    size = -(-channels // groups)
    return [(start, min(start + size, channels)) for start in range(0, channels, size)]


def gradcam_weights(grads: np.ndarray) -> np.ndarray:
    """Grad-CAM's w_k = mean over (i, j) of G_k: [N, K] float64 from gradients [N, K, h, w]."""
    return np.asarray(grads, dtype=np.float64).mean(axis=(2, 3))


def gradcam_plus_plus_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++'s w_k = sum_ij alpha * relu(g): [N, K] float64.

    alpha = g^2 / (2 g^2 + sum_ab A_k[a,b] * g^3), and 0 where that denominator is 0.
    """
    a = np.asarray(acts, dtype=np.float64)
    g = np.asarray(grads, dtype=np.float64)
    squared = g * g
    denominator = 2 * squared + a.sum(axis=(2, 3), keepdims=True) * (squared * g)
    alpha = np.divide(squared, denominator, out=np.zeros_like(squared), where=denominator != 0)
    return (alpha * np.maximum(g, 0)).sum(axis=(2, 3))


def xgradcam_weights(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """XGrad-CAM's w_k = sum_ij (A_k / (sum_ab A_k + 1e-7)) * g: [N, K] float64."""
    a = np.asarray(acts, dtype=np.float64)
    g = np.asarray(grads, dtype=np.float64)
    return (a / (a.sum(axis=(2, 3), keepdims=True) + XGRAD_EPS) * g).sum(axis=(2, 3))


def channel_percentiles(values: np.ndarray, theta: float) -> np.ndarray:
    """Per channel of values [N, K, h, w]: np.percentile(channel, theta) with linear interpolation, [N, K] float32."""
    values = np.asarray(values, dtype=np.float32)
    n, k = values.shape[:2]
    return percentile_of_sorted(np.sort(values.reshape(n * k, -1), axis=1), theta).reshape(n, k)


def union_gradient_map(acts: np.ndarray, grads: np.ndarray, theta: float) -> np.ndarray:
    """Union-CAM's sum_k relu(G'_k) * A_k / sum_ij relu(G'_k) at low resolution, [N, h, w] float32 (float64 sums).

    G' is G with each channel's values below its theta-th percentile set to 0; a channel whose relu(G') sums
    to 0 adds nothing (its numerator is 0 everywhere).
    """
    g = np.asarray(grads, dtype=np.float32)
    threshold = channel_percentiles(g, theta)[:, :, None, None]
    positive = np.maximum(np.where(g < threshold, np.float32(0), g), np.float32(0)).astype(np.float64)
    totals = positive.sum(axis=(2, 3))
    scale = np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)
    summed = np.einsum("nkhw,nkhw,nk->nhw", positive, np.asarray(acts, dtype=np.float64), scale)
    return summed.astype(np.float32)


def group_activation_maps(acts: np.ndarray, weights: np.ndarray, groups: int) -> np.ndarray:
    """Group-CAM's S_g = relu(sum_{k in g} w_k A_k) per group of consecutive channels (group_bounds): [N, G, h, w] float32."""
    weighted = np.asarray(acts, dtype=np.float64) * np.asarray(weights, dtype=np.float64)[:, :, None, None]
    bounds = group_bounds(weighted.shape[1], groups)
    sums = np.stack([weighted[:, start:stop].sum(axis=1) for start, stop in bounds], axis=1)
    return np.maximum(sums, 0).astype(np.float32)


def _group_masks(group_maps: np.ndarray, mins: np.ndarray, maxs: np.ndarray, n: np.ndarray, g: np.ndarray,
                 rows, cols) -> np.ndarray:
    """norm(up(group_maps[n, g])) per row as float32 [M, H, W]; rows with g < 0 or a constant map are zeros."""
    valid = g >= 0
    safe = np.where(valid, g, 0)
    low = mins[n, safe][:, None, None]
    span = maxs[n, safe][:, None, None] - low
    mask = upsample_block(group_maps[n, safe], rows, cols)
    mask -= low
    np.divide(mask, span, out=mask, where=span > 0)
    mask[~(valid & (span[:, 0, 0] > 0))] = 0
    return mask


def write_group_blended_inputs(
    images: np.ndarray,
    blurred: np.ndarray,
    group_maps: np.ndarray,
    mins: np.ndarray,
    maxs: np.ndarray,
    image_index: np.ndarray,
    group_index: np.ndarray,
    out: np.ndarray,
    start: int = 0,
) -> None:
    """out[start + j] = M * images[n] + (1 - M) * blurred[n] with M = norm(up(group_maps[n, g])) (the group_blend kernel).

    (n, g) = (image_index[j], group_index[j]); norm uses the upsampled mins/maxs [N, G]; a group with max - min <= 0, or g = -1, gives M = 0 (the blurred
    image itself). Float32 math, rounded once to out's dtype.
    """
    images = np.asarray(images, dtype=np.float32)
    blurred = np.asarray(blurred, dtype=np.float32)
    group_maps = np.asarray(group_maps, dtype=np.float32)
    mins = np.asarray(mins, dtype=np.float32)
    maxs = np.asarray(maxs, dtype=np.float32)
    image_index = np.asarray(image_index, dtype=np.int64)
    group_index = np.asarray(group_index, dtype=np.int64)
    count = image_index.shape[0]
    _check_rows(count, out, start)
    height, width = out.shape[-2:]
    rows, cols = axis_table(group_maps.shape[2], height), axis_table(group_maps.shape[3], width)
    step = chunk_length((height, width))
    for first in range(0, count, step):
        n = image_index[first : first + step]
        mask = _group_masks(group_maps, mins, maxs, n, group_index[first : first + step], rows, cols)[:, None]
        blend = images[n] * mask
        blend += (np.float32(1) - mask) * blurred[n]
        out[start + first : start + first + len(n)] = blend


def weighted_group_masks(
    group_maps: np.ndarray, mins: np.ndarray, maxs: np.ndarray, scores: np.ndarray, out_hw: tuple[int, int]
) -> np.ndarray:
    """sum_g scores[n, g] * norm(up(group_maps[n, g])) per image, [N, H, W] float32 accumulated in float64.

    norm uses the upsampled mins/maxs [N, G] as write_group_blended_inputs does: a constant group adds nothing.
    """
    group_maps = np.asarray(group_maps, dtype=np.float32)
    mins = np.asarray(mins, dtype=np.float32)
    maxs = np.asarray(maxs, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float64)
    n, groups = group_maps.shape[:2]
    out = np.empty((n, *out_hw), dtype=np.float32)
    for image in range(n):
        masks = upsample(group_maps[image], out_hw)
        low = mins[image][:, None, None]
        span = maxs[image][:, None, None] - low
        masks -= low
        np.divide(masks, span, out=masks, where=span > 0)
        masks[~(span[:, 0, 0] > 0)] = 0
        out[image] = np.tensordot(scores[image], masks, axes=1)
    return out
