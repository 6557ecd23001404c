"""Loop-level NumPy references for the kernels, written from the algorithm page (no vectorised shortcuts)."""

from __future__ import annotations

import math
import numpy as np


def ref_source(dst: int, in_size: int, out_size: int) -> float:
    """PyTorch's half-pixel source coordinate (align_corners=False), clamped at 0.

    PyTorch computes it in float32 with scale = float32(in / out) and one rounding of
    scale * (dst + 0.5) - 0.5 (a fused multiply-add); same-size axes are copied.
    """
    if in_size == out_size:
        return float(dst)
    scale = float(np.float32(in_size) / np.float32(out_size))
    return max(float(np.float32(scale * (dst + 0.5) - 0.5)), 0.0)


def ref_taps(dst: int, in_size: int, out_size: int) -> tuple[int, int, float]:
    """(lower index, upper index, weight of upper) for one output position."""
    src = ref_source(dst, in_size, out_size)
    lower = min(int(math.floor(src)), in_size - 1)
    upper = lower + 1 if lower < in_size - 1 else lower
    return lower, upper, src - lower


def ref_weights(in_size: int, out_size: int) -> np.ndarray:
    weights = np.zeros((out_size, in_size))
    for dst in range(out_size):
        lower, upper, frac = ref_taps(dst, in_size, out_size)
        weights[dst, lower] += 1 - frac
        weights[dst, upper] += frac
    return weights


def ref_upsample_map(low: np.ndarray, height: int, width: int) -> np.ndarray:
    """One [h, w] map to [H, W] by explicit loops over output pixels, in float64."""
    values = np.asarray(low, dtype=np.float64).tolist()
    h, w = len(values), len(values[0])
    cols = [ref_taps(x, w, width) for x in range(width)]
    out = []
    for y in range(height):
        y0, y1, ly = ref_taps(y, h, height)
        row = []
        for x0, x1, lx in cols:
            top = (1 - lx) * values[y0][x0] + lx * values[y0][x1]
            bottom = (1 - lx) * values[y1][x0] + lx * values[y1][x1]
            row.append((1 - ly) * top + ly * bottom)
        out.append(row)
    return np.array(out)


def ref_upsample(maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    flat = maps.reshape(-1, *maps.shape[-2:])
    return np.stack([ref_upsample_map(m, *out_hw) for m in flat]).reshape(*maps.shape[:-2], *out_hw)


def ref_normalize_map(m: np.ndarray) -> np.ndarray:
    shifted = np.asarray(m, dtype=np.float64) - np.min(m)
    top = shifted.max()
    return shifted / top if top > 0 else shifted


def ref_normalize(maps: np.ndarray) -> np.ndarray:
    return np.stack([ref_normalize_map(m) for m in maps])


def ref_channel_masked(images, acts, mins, maxs, image_index, channel_index, out_hw) -> np.ndarray:
    rows = []
    for n, k in zip(image_index, channel_index):
        up = ref_upsample_map(acts[n, k], *out_hw)
        low, span = float(mins[n, k]), float(maxs[n, k]) - float(mins[n, k])
        mask = (up - low) / span if span > 0 else np.zeros(out_hw)
        rows.append(images[n].astype(np.float64) * mask)
    return np.stack(rows)


def ref_denoise(maps: np.ndarray, theta: float) -> np.ndarray:
    out = []
    for m in maps:
        t = np.percentile(m, theta)
        kept = m.copy()
        kept[kept < t] = 0
        out.append(ref_normalize_map(kept))
    return np.stack(out)
