"""Masked Score-CAM inputs on the CPU: `x * M` written straight into a caller's batch buffer."""

from __future__ import annotations

import numpy as np

from fusioncam.kernels.upsample_numpy import axis_table, chunk_length, upsample_block

__all__ = ["write_channel_masked_inputs", "write_map_masked_inputs"]


def _check_rows(count: int, out: np.ndarray, start: int) -> None:
    """Refuse a write that would fall outside out's rows."""
    if start < 0 or start + count > out.shape[0]:
        raise ValueError(f"{count} masked inputs from row {start} do not fit in a batch of {out.shape[0]}")


def write_channel_masked_inputs(
    images: np.ndarray,
    acts: np.ndarray,
    mins: np.ndarray,
    maxs: np.ndarray,
    image_index: np.ndarray,
    channel_index: np.ndarray,
    out: np.ndarray,
    start: int = 0,
) -> None:
    """out[start + j] = images[n] * norm(up(acts[n, k])) for (n, k) = (image_index[j], channel_index[j]).

    norm uses the upsampled mins/maxs [N, K]; a channel with max - min <= 0 gives a zero mask. Float32 math.
    """
    images = np.asarray(images, dtype=np.float32)
    acts = np.asarray(acts, dtype=np.float32)
    mins = np.asarray(mins, dtype=np.float32)
    maxs = np.asarray(maxs, dtype=np.float32)
    image_index = np.asarray(image_index, dtype=np.int64)
    channel_index = np.asarray(channel_index, dtype=np.int64)
    count = image_index.shape[0]
    _check_rows(count, out, start)
    height, width = out.shape[-2:]
    rows, cols = axis_table(acts.shape[2], height), axis_table(acts.shape[3], width)
    step = chunk_length((height, width))
    for first in range(0, count, step):
        n = image_index[first : first + step]
        k = channel_index[first : first + step]
        low = mins[n, k][:, None, None]
        span = maxs[n, k][:, None, None] - low
        mask = upsample_block(acts[n, k], rows, cols)
        mask -= low
        np.divide(mask, span, out=mask, where=span > 0)
        mask[~(span[:, 0, 0] > 0)] = 0
        target = out[start + first : start + first + len(n)]
        np.multiply(images[n], mask[:, None], out=target, dtype=np.float32, casting="unsafe")


def write_map_masked_inputs(
    images: np.ndarray,
    maps: np.ndarray,
    image_index: np.ndarray,
    out: np.ndarray,
    start: int = 0,
) -> None:
    """out[start + j] = images[image_index[j]] * maps[j] for full-resolution, already normalised maps [M, H, W]."""
    images = np.asarray(images, dtype=np.float32)
    maps = np.asarray(maps, dtype=np.float32)
    image_index = np.asarray(image_index, dtype=np.int64)
    count = image_index.shape[0]
    _check_rows(count, out, start)
    step = chunk_length(maps.shape[-2:])
    for first in range(0, count, step):
        n = image_index[first : first + step]
        target = out[start + first : start + first + len(n)]
        np.multiply(images[n], maps[first : first + step, None], out=target, dtype=np.float32, casting="unsafe")
