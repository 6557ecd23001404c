"""Per-image map arithmetic on the GPU: channel weighting, norm, denoising, softmax and the Fusion-CAM fusion."""

from __future__ import annotations

import cupy as cp

from fusioncam.kernels.array_math import nonfinite_rows, percentile_of_sorted, softmax, weighted_channel_sum
from fusioncam.kernels.upsample_cuda import EXACT_FLOAT_OPTIONS, upsample

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

# y <- (x - low) / span where the map's span = max - min is > 0, else x - low (zero for a constant map).
_NORMALIZE = cp.ElementwiseKernel(
    "float32 x, float32 low, float32 high",
    "float32 y",
    """
    const float span = high - low;
    y = span > 0.0f ? (x - low) / span : x - low;
    """,
    "fusioncam_normalize",
    options=EXACT_FLOAT_OPTIONS,
)

# y <- wa * a + wb * b, each product rounded before the sum, as NumPy does.
_WEIGHTED_PAIR = cp.ElementwiseKernel(
    "float32 a, float32 b, float32 wa, float32 wb",
    "float32 y",
    "y = wa * a + wb * b;",
    "fusioncam_weighted_pair",
    options=EXACT_FLOAT_OPTIONS,
)

# fused <- S * max(L1, L2) + (1 - S) * (L1 + L2) / 2, S = clip(1 - |L1 - L2|, 0, 1); NaN propagates as in NumPy.
_SIMILARITY_FUSION = cp.ElementwiseKernel(
    "float32 l_dr, float32 l_reg, float32 b_dr, float32 b_reg",
    "float32 fused",
    """
    const float l1 = b_dr * l_dr;
    const float l2 = b_reg * l_reg;
    float agreement = 1.0f - fabsf(l1 - l2);
    agreement = agreement < 0.0f ? 0.0f : (agreement > 1.0f ? 1.0f : agreement);
    const float larger = (isnan(l1) || l1 > l2) ? l1 : l2;
    fused = agreement * larger + (1.0f - agreement) * (l1 + l2) / 2.0f;
    """,
    "fusioncam_similarity_fusion",
    options=EXACT_FLOAT_OPTIONS,
)


def normalize(maps: cp.ndarray) -> cp.ndarray:
    """Per map [N, H, W]: M - min(M), divided by its max if that max is > 0 (a constant map becomes zeros)."""
    maps = cp.asarray(maps, dtype=cp.float32)
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    return _NORMALIZE(maps, low, high)


def relu_upsample_normalize(low: cp.ndarray, out_hw: tuple[int, int]) -> cp.ndarray:
    """norm(up(relu(low))) for low-resolution maps [N, h, w] -> [N, H, W] (Grad-CAM after channel weighting)."""
    return normalize(upsample(cp.maximum(cp.asarray(low, dtype=cp.float32), cp.float32(0)), out_hw))


def percentile_denoise(maps: cp.ndarray, theta: float) -> cp.ndarray:
    """Per map: values below its theta-th percentile (numpy's linear method) set to 0, then norm."""
    maps = cp.asarray(maps, dtype=cp.float32)
    n = maps.shape[0]
    threshold = percentile_of_sorted(cp.sort(maps.reshape(n, -1), axis=1), theta)
    kept = cp.where(maps < threshold[:, None, None], cp.float32(0), maps)
    return normalize(kept)


def weighted_pair(a: cp.ndarray, b: cp.ndarray, wa: cp.ndarray, wb: cp.ndarray) -> cp.ndarray:
    """norm(wa * a + wb * b) per image, weights [N] applied in float32 (the combined map L_dr)."""
    wa = cp.asarray(wa, dtype=cp.float32)[:, None, None]
    wb = cp.asarray(wb, dtype=cp.float32)[:, None, None]
    return normalize(_WEIGHTED_PAIR(cp.asarray(a, dtype=cp.float32), cp.asarray(b, dtype=cp.float32), wa, wb))


def similarity_fusion(l_dr: cp.ndarray, l_reg: cp.ndarray, b_dr: cp.ndarray, b_reg: cp.ndarray) -> cp.ndarray:
    """Fusion-CAM step 3: S = clip(1 - |L1 - L2|, 0, 1), norm(S * max(L1, L2) + (1 - S) * (L1 + L2) / 2).

    L1 = b_dr * l_dr and L2 = b_reg * l_reg, with the betas [N] applied in float32.
    """
    b_dr = cp.asarray(b_dr, dtype=cp.float32)[:, None, None]
    b_reg = cp.asarray(b_reg, dtype=cp.float32)[:, None, None]
    l_dr = cp.asarray(l_dr, dtype=cp.float32)
    l_reg = cp.asarray(l_reg, dtype=cp.float32)
    return normalize(_SIMILARITY_FUSION(l_dr, l_reg, b_dr, b_reg))
