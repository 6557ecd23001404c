"""Masked Score-CAM inputs on the GPU: one fused kernel per call writes `x * M` into a caller's batch buffer."""

from __future__ import annotations

import cupy as cp

from fusioncam.kernels.array_math import target_rows
from fusioncam.kernels.upsample_cuda import (
    BILINEAR_SOURCE,
    EXACT_FLOAT_OPTIONS,
    TABLE_ARGS,
    TABLE_PARAMS,
    interpolation_args,
)

__all__ = ["write_channel_masked_inputs", "write_map_masked_inputs"]

# out [M, 3, H, W] <- images[n] * norm(up(acts[n, k])): interpolate, normalise, multiply, round once to O.
_CHANNEL_MASKED = cp.ElementwiseKernel(
    "raw float32 images, raw float32 acts, raw float32 mins, raw float32 maxs, "
    "raw int64 image_index, raw int64 channel_index, "
    f"{TABLE_PARAMS}, int32 channels, int32 in_h, int32 in_w, int32 out_w, int64 plane",
    "O out",
    f"""
    const long long row = i / (3 * plane);
    const long long colour = (i / plane) % 3;
    const int pixel = (int)(i % plane);
    const long long n = image_index[row];
    const long long map_index = n * channels + channel_index[row];
    const float low = mins[map_index];
    const float span = maxs[map_index] - low;
    float mask = 0.0f;
    if (span > 0.0f) {{
        const int y = pixel / out_w;
        const int x = pixel - y * out_w;
        const float value = fc_bilinear(acts, map_index * in_h * in_w, in_w, {TABLE_ARGS}, y, x);
        mask = (value - low) / span;
    }}
    out = (O)(images[(n * 3 + colour) * plane + pixel] * mask);
    """,
    "fusioncam_channel_masked_inputs",
    preamble=BILINEAR_SOURCE,
    options=EXACT_FLOAT_OPTIONS,
)

# out [M, 3, H, W] <- images[image_index[j]] * maps[j], rounded once to O.
_MAP_MASKED = cp.ElementwiseKernel(
    "raw float32 images, raw float32 maps, raw int64 image_index, int64 plane",
    "O out",
    """
    const long long row = i / (3 * plane);
    const long long colour = (i / plane) % 3;
    const long long pixel = i % plane;
    out = (O)(images[(image_index[row] * 3 + colour) * plane + pixel] * maps[row * plane + pixel]);
    """,
    "fusioncam_map_masked_inputs",
    options=EXACT_FLOAT_OPTIONS,
)


def write_channel_masked_inputs(
    images: cp.ndarray,
    acts: cp.ndarray,
    mins: cp.ndarray,
    maxs: cp.ndarray,
    image_index: cp.ndarray,
    channel_index: cp.ndarray,
    out: cp.ndarray,
    start: int = 0,
) -> None:
    """out[start + j] = images[n] * norm(up(acts[n, k])) for (n, k) = (image_index[j], channel_index[j]).

    norm uses the upsampled mins/maxs [N, K]; a channel with max - min <= 0 gives a zero mask. Float32 math.
    """
    images = cp.asarray(images, dtype=cp.float32, order="C")
    acts = cp.asarray(acts, dtype=cp.float32, order="C")
    image_index = cp.asarray(image_index, dtype=cp.int64, order="C")
    channel_index = cp.asarray(channel_index, dtype=cp.int64, order="C")
    target = target_rows(image_index.shape[0], out, start)
    if target.size == 0:
        return
    _CHANNEL_MASKED(
        images,
        acts,
        cp.asarray(mins, dtype=cp.float32, order="C"),
        cp.asarray(maxs, dtype=cp.float32, order="C"),
        image_index,
        channel_index,
        *interpolation_args(acts.shape, out.shape[-2:]),
        target,
    )


def write_map_masked_inputs(
    images: cp.ndarray,
    maps: cp.ndarray,
    image_index: cp.ndarray,
    out: cp.ndarray,
    start: int = 0,
) -> None:
    """out[start + j] = images[image_index[j]] * maps[j] for full-resolution, already normalised maps [M, H, W]."""
    images = cp.asarray(images, dtype=cp.float32, order="C")
    maps = cp.asarray(maps, dtype=cp.float32, order="C")
    image_index = cp.asarray(image_index, dtype=cp.int64, order="C")
    target = target_rows(image_index.shape[0], out, start)
    if target.size == 0:
        return
    _MAP_MASKED(images, maps, image_index, out.shape[-2] * out.shape[-1], target)
