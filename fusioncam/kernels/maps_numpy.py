"""Per-image map arithmetic on the CPU: channel weighting, norm, denoising, softmax and the Fusion-CAM fusion."""

from __future__ import annotations

import numpy as np

from fusioncam.kernels.array_math import nonfinite_rows, softmax, weighted_channel_sum
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


def percentile_denoise(maps: np.ndarray, theta: float) -> np.ndarray:
    """Per map: values below its theta-th percentile (numpy's linear method) set to 0, then norm."""
    maps = np.asarray(maps, dtype=np.float32)
    n = maps.shape[0]
    threshold = np.percentile(maps.reshape(n, -1), float(theta), axis=1, method="linear")
    kept = np.where(maps < threshold.astype(np.float32)[:, None, None], np.float32(0), maps)
    return normalize(kept)


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
