"""Insertion-metric inputs on the CPU: `m * x + (1 - m) * baseline` written straight into a caller's batch buffer."""

from __future__ import annotations

import numpy as np

from fusioncam.kernels.array_math import target_rows
from fusioncam.kernels.masks_numpy import image_runs
from fusioncam.kernels.upsample_numpy import chunk_slices

__all__ = ["write_blended_inputs"]


def write_blended_inputs(
    images: np.ndarray,
    baselines: np.ndarray,
    masks: np.ndarray,
    image_index: np.ndarray,
    out: np.ndarray,
    start: int = 0,
) -> None:
    """out[start + j] = masks[j] * images[n] + (1 - masks[j]) * baselines[n] for n = image_index[j].

    images and baselines [N, 3, H, W], masks [M, H, W] (the same mask for all 3 channels). Float32 math.
    """
    images = np.asarray(images, dtype=np.float32)
    baselines = np.asarray(baselines, dtype=np.float32)
    masks = np.asarray(masks, dtype=np.float32)
    image_index = np.asarray(image_index, dtype=np.int64)
    target = target_rows(image_index.shape[0], out, start)
    for part in chunk_slices(len(target), masks.shape[-2:]):
        mask, chunk = masks[part, None], target[part]
        for rows, n in image_runs(image_index[part]):
            np.multiply(images[n][None], mask[rows], out=chunk[rows], dtype=np.float32, casting="unsafe")
            chunk[rows] += (np.float32(1) - mask[rows]) * baselines[n][None]
