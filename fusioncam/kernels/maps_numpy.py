"""Per-image map arithmetic on the CPU: channel weighting, norm, denoising, softmax and the Fusion-CAM fusion."""

from __future__ import annotations

import math

import numpy as np

from fusioncam.kernels.upsample_numpy import upsample

__all__ = [
    "weighted_channel_sum",
    "normalize",
    "relu_upsample_normalize",
    "percentile_denoise",
    "softmax",
    "weighted_pair",
    "similarity_fusion",
    "nonfinite_rows",
]


def weighted_channel_sum(acts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """sum_k weights[n, k] * acts[n, k] -> [N, h, w] float32, accumulated in float64 (at least float32)."""
    n, k, h, w = acts.shape
    flat = np.asarray(acts, dtype=np.float64).reshape(n, k, h * w)
    summed = np.matmul(np.asarray(weights, dtype=np.float64)[:, None, :], flat)
    return summed.reshape(n, h, w).astype(np.float32)


def normalize(maps: np.ndarray) -> np.ndarray:
    """Per map [N, H, W]: M - min(M), divided by its max if that max is > 0 (a constant map becomes zeros)."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low  # == max(M - min) exactly: subtraction is monotonic
    out = maps - low
    np.divide(out, span, out=out, where=span > 0)
    return out


def relu_upsample_normalize(low: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """norm(up(relu(low))) for low-resolution maps [N, h, w] -> [N, H, W] (Grad-CAM after channel weighting)."""
    return normalize(upsample(np.maximum(np.asarray(low, dtype=np.float32), np.float32(0)), out_hw))


def percentile_rule(count: int, theta: float) -> tuple[int, int, float]:
    """numpy's linear percentile of `count` sorted values: (lower index, upper index, gamma), as numpy computes them."""
    if not 0 <= theta <= 100:
        raise ValueError(f"Percentiles must be in the range [0, 100], got {theta}")
    virtual = (count - 1) * float(np.true_divide(theta, 100))
    lower = float(math.floor(virtual))
    if virtual >= count - 1:  # numpy then takes the last value and measures gamma from index -1
        lower = -1.0
        return count - 1, count - 1, virtual - lower
    return int(lower), int(lower) + 1, virtual - lower


def percentile_of_sorted(ordered: np.ndarray, theta: float) -> np.ndarray:
    """Per row of ordered [N, P] (each row sorted ascending): np.percentile(row, theta), bit for bit.

    numpy's float32 lerp, written with array operators only so that CuPy arrays work too.
    """
    lower, upper, gamma = percentile_rule(ordered.shape[1], float(theta))
    below, above = ordered[:, lower], ordered[:, upper]
    step = above - below
    if gamma >= 0.5:  # numpy's _lerp: exact at both ends
        return above - step * np.float32(1 - gamma)
    return below + step * np.float32(gamma)


def percentile_denoise(maps: np.ndarray, theta: float) -> np.ndarray:
    """Per map: values below its theta-th percentile (numpy's linear method) set to 0, then norm."""
    maps = np.asarray(maps, dtype=np.float32)
    n = maps.shape[0]
    threshold = np.percentile(maps.reshape(n, -1), float(theta), axis=1, method="linear")
    kept = np.where(maps < threshold.astype(np.float32)[:, None, None], np.float32(0), maps)
    return normalize(kept)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Max-subtracted softmax over the last axis of scores [N, K], in float64 (Score-CAM's channel weights)."""
    shifted = np.asarray(scores, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def weighted_pair(a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """norm(wa * a + wb * b) per image, weights [N] applied in float32 (the combined map L_dr)."""
    wa = np.asarray(wa, dtype=np.float32)[:, None, None]
    wb = np.asarray(wb, dtype=np.float32)[:, None, None]
    return normalize(wa * np.asarray(a, dtype=np.float32) + wb * np.asarray(b, dtype=np.float32))


def similarity_fusion(l_dr: np.ndarray, l_reg: np.ndarray, b_dr: np.ndarray, b_reg: np.ndarray) -> np.ndarray:
    """Fusion-CAM step 3: S = clip(1 - |L1 - L2|, 0, 1), norm(S * max(L1, L2) + (1 - S) * (L1 + L2) / 2).

    L1 = b_dr * l_dr and L2 = b_reg * l_reg, with the betas [N] applied in float32.
    """
    l1 = np.asarray(b_dr, dtype=np.float32)[:, None, None] * np.asarray(l_dr, dtype=np.float32)
    l2 = np.asarray(b_reg, dtype=np.float32)[:, None, None] * np.asarray(l_reg, dtype=np.float32)
    agreement = np.clip(1 - np.abs(l1 - l2), 0, 1)
    return normalize(agreement * np.maximum(l1, l2) + (1 - agreement) * (l1 + l2) / 2)


def nonfinite_rows(*arrays: np.ndarray) -> np.ndarray:
    """[N] bool: True for image n where any of the arrays [N, ...] holds NaN or infinity in row n."""
    if not arrays:
        raise ValueError("nonfinite_rows needs at least one array")
    bad = np.zeros(len(arrays[0]), dtype=bool)
    for array in arrays:
        array = np.asarray(array)
        bad |= ~np.isfinite(array.reshape(len(array), int(np.prod(array.shape[1:])))).all(axis=1)
    return bad
