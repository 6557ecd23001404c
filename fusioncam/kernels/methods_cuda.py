"""Channel weights and maps of Grad-CAM++, XGrad-CAM, Union-CAM and Group-CAM on the GPU (the page's "Related methods")."""

from __future__ import annotations

import cupy as cp

from fusioncam.kernels.maps_numpy import percentile_of_sorted
from fusioncam.kernels.methods_numpy import XGRAD_EPS, group_bounds
from fusioncam.kernels.upsample_cuda import (
    BILINEAR_SOURCE,
    EXACT_FLOAT_OPTIONS,
    TABLE_ARGS,
    TABLE_PARAMS,
    device_tables,
)

__all__ = [
    "gradcam_weights",
    "gradcam_plus_plus_weights",
    "xgradcam_weights",
    "channel_percentiles",
    "union_gradient_map",
    "group_activation_maps",
    "write_group_blended_inputs",
    "weighted_group_masks",
]

# norm(up(group_maps[n, g])) at one output pixel, 0 for g < 0 or a constant map; the arithmetic of methods_numpy.
_GROUP_MASK_SOURCE = BILINEAR_SOURCE + r"""
template <class Maps, class Bounds, class Index, class Frac>
__device__ __forceinline__ float fc_group_mask(
        const Maps& group_maps, const Bounds& mins, const Bounds& maxs, long long n, long long g, int groups,
        int in_h, int in_w,
        const Index& row_lower, const Index& row_upper, const Frac& row_frac,
        const Index& col_lower, const Index& col_upper, const Frac& col_frac, int y, int x) {
    if (g < 0) return 0.0f;
    const long long map_index = n * groups + g;
    const float low = mins[map_index];
    const float span = maxs[map_index] - low;
    if (!(span > 0.0f)) return 0.0f;
    const float value = fc_bilinear(group_maps, map_index * in_h * in_w, in_w, row_lower, row_upper, row_frac,
                                    col_lower, col_upper, col_frac, y, x);
    return (value - low) / span;
}
"""

# out [M, 3, H, W] <- M * images[n] + (1 - M) * blurred[n] (the group_blend kernel), rounded once to O.
_GROUP_BLEND = cp.ElementwiseKernel(
    "raw float32 images, raw float32 blurred, raw float32 group_maps, raw float32 mins, raw float32 maxs, "
    "raw int64 image_index, raw int64 group_index, "
    f"{TABLE_PARAMS}, int32 groups, int32 in_h, int32 in_w, int32 out_w, int64 plane",
    "O out",
    f"""
    const long long row = i / (3 * plane);
    const long long colour = (i / plane) % 3;
    const int pixel = (int)(i % plane);
    const long long n = image_index[row];
    const int y = pixel / out_w;
    const int x = pixel - y * out_w;
    const float mask = fc_group_mask(group_maps, mins, maxs, n, group_index[row], groups, in_h, in_w,
                                     {TABLE_ARGS}, y, x);
    const long long source = (n * 3 + colour) * plane + pixel;
    out = (O)(images[source] * mask + (1.0f - mask) * blurred[source]);
    """,
    "fusioncam_group_blend",
    preamble=_GROUP_MASK_SOURCE,
    options=EXACT_FLOAT_OPTIONS,
)

# out [N, H, W] <- sum_g scores[n, g] * norm(up(group_maps[n, g])), accumulated in double.
_WEIGHTED_GROUP_MASKS = cp.ElementwiseKernel(
    "raw float32 group_maps, raw float32 mins, raw float32 maxs, raw float64 scores, "
    f"{TABLE_PARAMS}, int32 groups, int32 in_h, int32 in_w, int32 out_w, int64 plane",
    "float32 out",
    f"""
    const long long n = i / plane;
    const int pixel = (int)(i - n * plane);
    const int y = pixel / out_w;
    const int x = pixel - y * out_w;
    double total = 0.0;
    for (int g = 0; g < groups; ++g) {{
        const double score = scores[n * groups + g];
        if (score != 0.0) {{
            total += score * (double)fc_group_mask(group_maps, mins, maxs, n, g, groups, in_h, in_w,
                                                   {TABLE_ARGS}, y, x);
        }}
    }}
    out = (float)total;
    """,
    "fusioncam_weighted_group_masks",
    preamble=_GROUP_MASK_SOURCE,
    options=EXACT_FLOAT_OPTIONS,
)


def gradcam_weights(grads: cp.ndarray) -> cp.ndarray:
    """Grad-CAM's w_k = mean over (i, j) of G_k: [N, K] float64 from gradients [N, K, h, w]."""
    return cp.asarray(grads, dtype=cp.float64).mean(axis=(2, 3))


def gradcam_plus_plus_weights(acts: cp.ndarray, grads: cp.ndarray) -> cp.ndarray:
    """Grad-CAM++'s w_k = sum_ij alpha * relu(g): [N, K] float64.

    alpha = g^2 / (2 g^2 + sum_ab A_k[a,b] * g^3), and 0 where that denominator is 0.
    """
    a = cp.asarray(acts, dtype=cp.float64)
    g = cp.asarray(grads, dtype=cp.float64)
    squared = g * g
    denominator = 2 * squared + a.sum(axis=(2, 3), keepdims=True) * (squared * g)
    nonzero = denominator != 0
    alpha = cp.where(nonzero, squared / cp.where(nonzero, denominator, 1.0), 0.0)
    return (alpha * cp.maximum(g, 0)).sum(axis=(2, 3))


def xgradcam_weights(acts: cp.ndarray, grads: cp.ndarray) -> cp.ndarray:
    """XGrad-CAM's w_k = sum_ij (A_k / (sum_ab A_k + 1e-7)) * g: [N, K] float64."""
    a = cp.asarray(acts, dtype=cp.float64)
    g = cp.asarray(grads, dtype=cp.float64)
    return (a / (a.sum(axis=(2, 3), keepdims=True) + XGRAD_EPS) * g).sum(axis=(2, 3))


def channel_percentiles(values: cp.ndarray, theta: float) -> cp.ndarray:
    """Per channel of values [N, K, h, w]: np.percentile(channel, theta) with linear interpolation, [N, K] float32."""
    values = cp.asarray(values, dtype=cp.float32)
    n, k = values.shape[:2]
    return percentile_of_sorted(cp.sort(values.reshape(n * k, -1), axis=1), theta).reshape(n, k)


def union_gradient_map(acts: cp.ndarray, grads: cp.ndarray, theta: float) -> cp.ndarray:
    """Union-CAM's sum_k relu(G'_k) * A_k / sum_ij relu(G'_k) at low resolution, [N, h, w] float32 (float64 sums).

    G' is G with each channel's values below its theta-th percentile set to 0; a channel whose relu(G') sums
    to 0 adds nothing (its numerator is 0 everywhere).
    """
    g = cp.asarray(grads, dtype=cp.float32)
    threshold = channel_percentiles(g, theta)[:, :, None, None]
    positive = cp.maximum(cp.where(g < threshold, cp.float32(0), g), cp.float32(0)).astype(cp.float64)
    totals = positive.sum(axis=(2, 3))
    scale = cp.where(totals > 0, 1.0 / cp.where(totals > 0, totals, 1.0), 0.0)
    summed = (positive * cp.asarray(acts, dtype=cp.float64) * scale[:, :, None, None]).sum(axis=1)
    return summed.astype(cp.float32)


def group_activation_maps(acts: cp.ndarray, weights: cp.ndarray, groups: int) -> cp.ndarray:
    """Group-CAM's S_g = relu(sum_{k in g} w_k A_k) per group of consecutive channels (group_bounds): [N, G, h, w] float32."""
    weighted = cp.asarray(acts, dtype=cp.float64) * cp.asarray(weights, dtype=cp.float64)[:, :, None, None]
    bounds = group_bounds(weighted.shape[1], groups)
    sums = cp.stack([weighted[:, start:stop].sum(axis=1) for start, stop in bounds], axis=1)
    return cp.maximum(sums, 0).astype(cp.float32)


def write_group_blended_inputs(
    images: cp.ndarray,
    blurred: cp.ndarray,
    group_maps: cp.ndarray,
    mins: cp.ndarray,
    maxs: cp.ndarray,
    image_index: cp.ndarray,
    group_index: cp.ndarray,
    out: cp.ndarray,
    start: int = 0,
) -> None:
    """out[start + j] = M * images[n] + (1 - M) * blurred[n] with M = norm(up(group_maps[n, g])) (the group_blend kernel).

    (n, g) = (image_index[j], group_index[j]); norm uses the upsampled mins/maxs [N, G]; a group with max - min <= 0, or g = -1, gives M = 0 (the blurred
    image itself). Float32 math, rounded once to out's dtype.
    """
    group_maps = cp.asarray(group_maps, dtype=cp.float32, order="C")
    image_index = cp.asarray(image_index, dtype=cp.int64, order="C")
    count = image_index.shape[0]
    if start < 0 or start + count > out.shape[0]:
        raise ValueError(f"{count} masked inputs from row {start} do not fit in a batch of {out.shape[0]}")
    if count == 0:
        return
    _, groups, h, w = group_maps.shape
    height, width = out.shape[-2:]
    _GROUP_BLEND(
        cp.asarray(images, dtype=cp.float32, order="C"),
        cp.asarray(blurred, dtype=cp.float32, order="C"),
        group_maps,
        cp.asarray(mins, dtype=cp.float32, order="C"),
        cp.asarray(maxs, dtype=cp.float32, order="C"),
        image_index,
        cp.asarray(group_index, dtype=cp.int64, order="C"),
        *device_tables((h, w), (height, width)),
        groups,
        h,
        w,
        width,
        height * width,
        out[start : start + count],
    )


def weighted_group_masks(
    group_maps: cp.ndarray, mins: cp.ndarray, maxs: cp.ndarray, scores: cp.ndarray, out_hw: tuple[int, int]
) -> cp.ndarray:
    """sum_g scores[n, g] * norm(up(group_maps[n, g])) per image, [N, H, W] float32 accumulated in float64.

    norm uses the upsampled mins/maxs [N, G] as write_group_blended_inputs does: a constant group adds nothing.
    """
    group_maps = cp.asarray(group_maps, dtype=cp.float32, order="C")
    n, groups, h, w = group_maps.shape
    height, width = int(out_hw[0]), int(out_hw[1])
    out = cp.empty((n, height, width), dtype=cp.float32)
    if out.size == 0:
        return out
    _WEIGHTED_GROUP_MASKS(
        group_maps,
        cp.asarray(mins, dtype=cp.float32, order="C"),
        cp.asarray(maxs, dtype=cp.float32, order="C"),
        cp.asarray(scores, dtype=cp.float64, order="C"),
        *device_tables((h, w), (height, width)),
        groups,
        h,
        w,
        width,
        height * width,
        out,
    )
    return out

