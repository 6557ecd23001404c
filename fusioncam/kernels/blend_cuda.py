"""Insertion-metric inputs on the GPU: one kernel writes `m * x + (1 - m) * baseline` into a caller's batch buffer."""

from __future__ import annotations

import cupy as cp

from fusioncam.kernels.array_math import target_rows
from fusioncam.kernels.upsample_cuda import EXACT_FLOAT_OPTIONS

__all__ = ["write_blended_inputs"]

# out [M, 3, H, W] <- masks[j] * images[n] + (1 - masks[j]) * baselines[n], n = image_index[j]; rounded as NumPy does.
_BLENDED = cp.ElementwiseKernel(
    "raw float32 images, raw float32 baselines, raw float32 masks, raw int64 image_index, int64 plane",
    "O out",
    """
    const long long row = i / (3 * plane);
    const long long colour = (i / plane) % 3;
    const long long pixel = i % plane;
    const long long source = (image_index[row] * 3 + colour) * plane + pixel;
    const float mask = masks[row * plane + pixel];
    const float shown = images[source] * mask;
    const float hidden = (1.0f - mask) * baselines[source];
    out = (O)(shown + hidden);
    """,
    "fusioncam_blended_inputs",
    options=EXACT_FLOAT_OPTIONS,
)


def write_blended_inputs(
    images: cp.ndarray,
    baselines: cp.ndarray,
    masks: cp.ndarray,
    image_index: cp.ndarray,
    out: cp.ndarray,
    start: int = 0,
) -> None:
    """out[start + j] = masks[j] * images[n] + (1 - masks[j]) * baselines[n] for n = image_index[j].

    images and baselines [N, 3, H, W], masks [M, H, W] (the same mask for all 3 channels). Float32 math.
    """
    images = cp.asarray(images, dtype=cp.float32, order="C")
    baselines = cp.asarray(baselines, dtype=cp.float32, order="C")
    masks = cp.asarray(masks, dtype=cp.float32, order="C")
    image_index = cp.asarray(image_index, dtype=cp.int64, order="C")
    target = target_rows(image_index.shape[0], out, start)
    if target.size == 0:
        return
    _BLENDED(images, baselines, masks, image_index, out.shape[-2] * out.shape[-1], target)
