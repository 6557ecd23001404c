"""Channel weights and maps of Grad-CAM++, XGrad-CAM, Union-CAM and Group-CAM on the CPU (the page's "Related methods")."""

from __future__ import annotations

import numpy as np

from fusioncam.kernels.array_math import (
    gradcam_plus_plus_weights,
    gradcam_weights,
    group_activation_maps,
    target_rows,
    union_channel_terms,
    xgradcam_weights,
)
from fusioncam.kernels.masks_numpy import image_runs, normalized_masks
from fusioncam.kernels.scratch import scratch
from fusioncam.kernels.upsample_numpy import axis_table, chunk_slices, upsample, upsample_block

__all__ = [
    "gradcam_weights",
    "gradcam_plus_plus_weights",
    "xgradcam_weights",
    "union_gradient_map",
    "group_activation_maps",
    "write_group_blended_inputs",
    "weighted_group_masks",
]


def union_gradient_map(acts: np.ndarray, grads: np.ndarray, theta: float) -> np.ndarray:
    """Union-CAM's sum_k relu(G'_k) * A_k / sum_ij relu(G'_k) at low resolution, [N, h, w] float32 (float64 sums).

    G' is G with each channel's values below its theta-th percentile set to 0; a channel whose relu(G') sums
    to 0 adds nothing (its numerator is 0 everywhere).
    """
    positive, scale = union_channel_terms(grads, theta)
    summed = np.einsum("nkhw,nkhw,nk->nhw", positive, np.asarray(acts, dtype=np.float64), scale)
    return summed.astype(np.float32)


def _group_masks(group_maps: np.ndarray, mins: np.ndarray, maxs: np.ndarray, n: np.ndarray, g: np.ndarray,
                 rows, cols) -> np.ndarray:
    """norm(up(group_maps[n, g])) per row as float32 [M, H, W]; rows with g < 0 or a constant map are zeros."""
    valid = g >= 0
    safe = np.where(valid, g, 0)
    mask = scratch("group_masks", (len(n), len(rows.lower), len(cols.lower)))
    normalized_masks(upsample_block(group_maps[n, safe], rows, cols, out=mask), mins[n, safe], maxs[n, safe])
    mask[~valid] = 0
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
    target = target_rows(image_index.shape[0], out, start)
    height, width = out.shape[-2:]
    rows, cols = axis_table(group_maps.shape[2], height), axis_table(group_maps.shape[3], width)
    for part in chunk_slices(len(target), (height, width)):
        n = image_index[part]
        mask = _group_masks(group_maps, mins, maxs, n, group_index[part], rows, cols)[:, None]
        blend = scratch("group_blends", (len(n), *images.shape[1:]))  # float32, rounded once into target
        for run, image in image_runs(n):
            np.multiply(images[image][None], mask[run], out=blend[run])
            blend[run] += (np.float32(1) - mask[run]) * blurred[image][None]
        target[part] = blend


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
        masks = normalized_masks(upsample(group_maps[image], out_hw), mins[image], maxs[image])
        out[image] = np.tensordot(scores[image], masks, axes=1)
    return out
