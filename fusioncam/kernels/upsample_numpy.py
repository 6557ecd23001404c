"""Bilinear upsampling on the CPU, exactly PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`.

Each output value is two lerps along x then one along y, `a + t * (b - a)` in float32:
a constant map stays exactly constant, so its normalised mask is exactly zero.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fusioncam.kernels.scratch import scratch

__all__ = ["upsample", "upsampled_min_max"]  # bilinear_weights: public, not a KernelSet member

# At most this many output pixels are materialised at once (64 maps of 224 x 224).
CHUNK_PIXELS = 64 * 224 * 224


@dataclass(frozen=True)
class AxisTable:
    """Where each output row (or column) of one resized axis reads from, and how much of each."""

    lower: np.ndarray  # int64 [out]: first source index
    upper: np.ndarray  # int64 [out]: second source index (== lower at the last row)
    frac: np.ndarray  # float32 [out]: weight of `upper`, in [0, 1]


@functools.lru_cache(maxsize=64)
def axis_table(in_size: int, out_size: int, align_corners: bool = False) -> AxisTable:
    """PyTorch's half-pixel source indices for one axis: src = max(scale * (dst + 0.5) - 0.5, 0).

    `scale` is float32 in/out and src is rounded once to float32, as PyTorch's fused multiply-add does.
    align_corners=True gives PyTorch's corner-aligned indices instead, src = dst * float32((in - 1) / (out - 1))
    (`nn.UpsamplingBilinear2d`, which pytorch-grad-cam's Score-CAM masks use).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    if in_size == out_size:  # PyTorch copies an axis that keeps its size
        src = np.arange(out_size, dtype=np.float32)
    elif align_corners:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
        src = np.arange(out_size, dtype=np.float32) * scale
    else:
        scale = np.float64(np.float32(in_size) / np.float32(out_size))
        centres = np.arange(out_size, dtype=np.float64) + 0.5
        src = np.maximum((scale * centres - 0.5).astype(np.float32), np.float32(0))
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = lower + (lower < in_size - 1)
    frac = np.clip(src - lower.astype(np.float32), 0, 1).astype(np.float32)
    for array in (lower, upper, frac):
        array.setflags(write=False)
    return AxisTable(lower, upper, frac)


def chunk_length(out_hw: tuple[int, int]) -> int:
    """How many maps of this output size fit in one bounded chunk."""
    return max(1, CHUNK_PIXELS // (out_hw[0] * out_hw[1]))


def chunk_slices(count: int, out_hw: tuple[int, int]) -> Iterator[slice]:
    """Consecutive slices of at most chunk_length(out_hw) rows that together cover rows 0 .. count - 1."""
    step = chunk_length(out_hw)
    for first in range(0, count, step):
        yield slice(first, first + step)


def upsample_block(maps: np.ndarray, rows: AxisTable, cols: AxisTable, out: np.ndarray | None = None) -> np.ndarray:
    """Upsample a small stack [c, h, w] float32 to [c, H, W] (x lerp, then y lerp), into `out` if given.

    Writing into a reused `out` spares the page faults of a fresh multi-megabyte array per scorer batch.
    """
    left = maps[:, :, cols.lower]
    wide = maps[:, :, cols.upper] - left
    wide *= cols.frac
    wide += left
    if out is None:
        out = np.empty((maps.shape[0], len(rows.lower), len(cols.lower)), dtype=np.float32)
    top = np.take(wide, rows.lower, axis=1, out=scratch("upsample_top", out.shape), mode="clip")
    np.take(wide, rows.upper, axis=1, out=out, mode="clip")
    out -= top
    out *= rows.frac[:, None]
    out += top
    return out


def extreme_rows(table: AxisTable) -> AxisTable:
    """The output rows that can hold a column's extremes: the first and last of each run reading the same source pair.

    Within such a run each output is `a + t * (b - a)` with a, b fixed and t non-decreasing, and float32 rounding
    is monotone, so for every column the run's smallest and largest values sit at its ends: min/max over these
    rows equal min/max over all rows, bit for bit.
    """
    pairs = table.lower * (int(table.upper.max()) + 1) + table.upper
    change = np.flatnonzero(np.diff(pairs)) + 1
    keep = np.unique(np.concatenate([[0], change - 1, change, [len(pairs) - 1]]))
    return AxisTable(table.lower[keep], table.upper[keep], table.frac[keep])


def bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """The [out_size, in_size] float32 matrix of PyTorch's bilinear resize along one axis (align_corners=False).

    Row r holds 1 - frac at the lower source index and frac at the upper one; `up(A) = Wh @ A @ Ww.T`.
    """
    table = axis_table(in_size, out_size)
    rows = np.arange(out_size)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    np.add.at(weights, (rows, table.lower), np.float32(1) - table.frac)
    np.add.at(weights, (rows, table.upper), table.frac)
    return weights


def upsample(maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of maps [..., h, w] to [..., H, W] float32 (half-pixel centres, no antialias)."""
    maps = np.asarray(maps, dtype=np.float32)
    *lead, h, w = maps.shape
    height, width = out_hw
    rows, cols = axis_table(h, height), axis_table(w, width)
    flat = maps.reshape(-1, h, w)
    out = np.empty((flat.shape[0], height, width), dtype=np.float32)
    for part in chunk_slices(flat.shape[0], out_hw):
        out[part] = upsample_block(flat[part], rows, cols)
    return out.reshape(*lead, height, width)


def upsampled_min_max(acts: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Min and max [N, K] float32 of every channel's upsampled map, never materialising all of them at once.

    Bilinear upsampling need not reach the low-resolution extremes, so Score-CAM's norm needs these.
    """
    # Only the rows of `extreme_rows` are upsampled (14 of 224 for 7 -> 224): the same values, bit for bit.
    acts = np.asarray(acts, dtype=np.float32)
    n, k, h, w = acts.shape
    rows, cols = extreme_rows(axis_table(h, out_hw[0])), axis_table(w, out_hw[1])
    flat = acts.reshape(n * k, h, w)
    mins = np.empty(n * k, dtype=np.float32)
    maxs = np.empty(n * k, dtype=np.float32)
    for part in chunk_slices(n * k, (len(rows.lower), out_hw[1])):
        block = upsample_block(flat[part], rows, cols)
        mins[part] = block.min(axis=(1, 2))
        maxs[part] = block.max(axis=(1, 2))
    return mins.reshape(n, k), maxs.reshape(n, k)
