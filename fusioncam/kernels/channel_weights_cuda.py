"""Channel weights and maps of Grad-CAM++, XGrad-CAM, Union-CAM and Group-CAM on the GPU (the page's "Related methods")."""

from __future__ import annotations

import cupy as cp

from fusioncam.kernels.array_math import (
    gradcam_plus_plus_weights,
    gradcam_weights,
    group_activation_maps,
    target_rows,
    union_channel_terms,
    xgradcam_weights,
)
from fusioncam.kernels.upsample_cuda import (
    BILINEAR_SOURCE,
    EXACT_FLOAT_OPTIONS,
    TABLE_ARGS,
    TABLE_PARAMS,
    interpolation_args,
)

__all__ = [
    "gradcam_weights",
    "gradcam_plus_plus_weights",
    "xgradcam_weights",
    "union_gradient_map",
    "group_activation_maps",
    "write_group_blended_inputs",
    "weighted_group_masks",
]

# norm(up(group_maps[n, g])) at one output pixel, 0 for g < 0 or a constant map; the arithmetic of channel_weights_numpy.
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


def union_gradient_map(acts: cp.ndarray, grads: cp.ndarray, theta: float) -> cp.ndarray:
    """Union-CAM's sum_k relu(G'_k) * A_k / sum_ij relu(G'_k) at low resolution, [N, h, w] float32 (float64 sums).

    G' is G with each channel's values below its theta-th percentile set to 0; a channel whose relu(G') sums
    to 0 adds nothing (its numerator is 0 everywhere).
    """
    positive, scale = union_channel_terms(grads, theta)
    summed = (positive * cp.asarray(acts, dtype=cp.float64) * scale[:, :, None, None]).sum(axis=1)
    return summed.astype(cp.float32)


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
    target = target_rows(image_index.shape[0], out, start)
    if len(target) == 0:
        return
    _GROUP_BLEND(
        cp.asarray(images, dtype=cp.float32, order="C"),
        cp.asarray(blurred, dtype=cp.float32, order="C"),
        group_maps,
        cp.asarray(mins, dtype=cp.float32, order="C"),
        cp.asarray(maxs, dtype=cp.float32, order="C"),
        image_index,
        cp.asarray(group_index, dtype=cp.int64, order="C"),
        *interpolation_args(group_maps.shape, out.shape[-2:]),
        target,
    )


def weighted_group_masks(
    group_maps: cp.ndarray, mins: cp.ndarray, maxs: cp.ndarray, scores: cp.ndarray, out_hw: tuple[int, int]
) -> cp.ndarray:
    """sum_g scores[n, g] * norm(up(group_maps[n, g])) per image, [N, H, W] float32 accumulated in float64.

    norm uses the upsampled mins/maxs [N, G] as write_group_blended_inputs does: a constant group adds nothing.
    """
    group_maps = cp.asarray(group_maps, dtype=cp.float32, order="C")
    out = cp.empty((group_maps.shape[0], int(out_hw[0]), int(out_hw[1])), dtype=cp.float32)
    if out.size == 0:
        return out
    _WEIGHTED_GROUP_MASKS(
        group_maps,
        cp.asarray(mins, dtype=cp.float32, order="C"),
        cp.asarray(maxs, dtype=cp.float32, order="C"),
        cp.asarray(scores, dtype=cp.float64, order="C"),
        *interpolation_args(group_maps.shape, out.shape[-2:]),
        out,
    )
    return out

