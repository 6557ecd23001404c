"""Masked Score-CAM inputs on the CPU: `x * M` written straight into a caller's batch buffer."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from fusioncam.kernels.array_math import target_rows
from fusioncam.kernels.scratch import scratch
from fusioncam.kernels.upsample_numpy import axis_table, chunk_slices, upsample_block

__all__ = ["write_channel_masked_inputs", "write_map_masked_inputs"]


def normalized_masks(masks: np.ndarray, mins: np.ndarray, maxs: np.ndarray) -> np.ndarray:
    """masks [M, H, W] float32 normalised in place by their upsampled mins/maxs [M]: (m - min) / (max - min).

    A mask with max - min <= 0 (a constant map) becomes zeros.
    """
    low = mins[:, None, None]
    span = maxs[:, None, None] - low
    masks -= low
    varying = span[:, 0, 0] > 0
    if varying.all():  # the usual case: a plain divide is much faster than a masked one
        masks /= span
        return masks
    np.divide(masks, span, out=masks, where=span > 0)
    masks[~varying] = 0
    return masks


def image_runs(image_index: np.ndarray) -> Iterator[tuple[slice, int]]:
    """(rows, n) for each run of consecutive rows of one image (rows come grouped by image): the kernels broadcast
    images[n] over a run instead of gathering a copy of the image per row."""
    bounds = np.flatnonzero(np.diff(image_index)) + 1
    for first, last in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(image_index)]])):
        yield slice(int(first), int(last)), int(image_index[first])


def multiply_by_images(images: np.ndarray, image_index: np.ndarray, masks: np.ndarray, out: np.ndarray) -> None:
    """out[j] = images[image_index[j]] * masks[j, None] in float32, one broadcast per run of rows of one image."""
    for rows, n in image_runs(image_index):
        np.multiply(images[n][None], masks[rows, None], out=out[rows], dtype=np.float32, casting="unsafe")


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
    target = target_rows(image_index.shape[0], out, start)
    height, width = out.shape[-2:]
    rows, cols = axis_table(acts.shape[2], height), axis_table(acts.shape[3], width)
    for part in chunk_slices(len(target), (height, width)):
        n, k = image_index[part], channel_index[part]
        masks = scratch("channel_masks", (len(n), height, width))
        normalized_masks(upsample_block(acts[n, k], rows, cols, out=masks), mins[n, k], maxs[n, k])
        multiply_by_images(images, n, masks, target[part])


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
    target = target_rows(image_index.shape[0], out, start)
    for part in chunk_slices(len(target), maps.shape[-2:]):
        multiply_by_images(images, image_index[part], maps[part], target[part])
