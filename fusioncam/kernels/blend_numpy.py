"""Insertion-metric inputs on the CPU: `m * x + (1 - m) * baseline` written straight into a caller's batch buffer."""

from __future__ import annotations

import numpy as np

from fusioncam.kernels.masks_numpy import _check_rows
from fusioncam.kernels.upsample_numpy import chunk_length

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
    count = image_index.shape[0]
    _check_rows(count, out, start)
    step = chunk_length(masks.shape[-2:])
    for first in range(0, count, step):
        n = image_index[first : first + step]
        mask = masks[first : first + step, None]
        target = out[start + first : start + first + len(n)]
        np.multiply(images[n], mask, out=target, dtype=np.float32, casting="unsafe")
        target += (np.float32(1) - mask) * baselines[n]
