"""Several target layers' maps made into one, as pytorch-grad-cam's aggregate_multi_layers does, or as a plain mean.

pytorch-grad-cam's compute_cam_per_layer forms each layer's map as up(norm(relu(low))): the low-resolution map is
scaled to [0, 1] and then resized to the input; aggregate_multi_layers takes the ReLU of those, averages them and
scales the mean to [0, 1] (x - min, over max + 1e-7). fusioncam's engine ends every map of this kind with
norm(up(relu(low))) (methods/engine.py, low_resolution_map, and compat="pytorch-grad-cam"'s Score-CAM map): scaled
after resizing. With one layer both give the same map; with several they weigh the layers differently, because
bilinear upsampling does not reach the low-resolution maximum (0.06-0.11 apart on ResNet-18 layer3 + layer4).

Bilinear upsampling is a linear map U = U_y (x) U_x with full column rank for an enlargement, and it keeps constants,
so the engine's map M = (U relu(low) - m) / d determines relu(low) up to the same affine change: the least-squares
solve L' = U_y^+ M (U_x^+)^T gives (relu(low) - m) / d exactly (up to float rounding), and norm(L') = norm(relu(low)),
as the min-max scaling removes any positive affine change. up(norm(L')) is then pytorch-grad-cam's per-layer map,
but for its 1e-7 in the divisor (max - min + 1e-7): a layer whose low-resolution map spans r is scaled by
r / (r + 1e-7) there and by 1 here, a difference of 1e-7 / r (1e-4 for r = 1e-3).
This holds for every map of the form norm(up(relu(low))) (LOW_RESOLUTION_FORM); Fusion-CAM, Group-CAM and Union-CAM
combine maps at the input resolution and are not of that form (pytorch-grad-cam has no such methods; their layers'
maps are averaged as they are).

Without compat the layers' maps (each already in [0, 1]) are averaged and the mean scaled to [0, 1] per image.
Both run on the host, in NumPy, once per call: [N, H, W] per layer and method.

Tasks whose rows read some layers and not others (a detector's instance and its feature pyramid: a dense head
reads each level on its own, a two-stage head pools each box on one level) weigh the layers instead of averaging
them (Task.layers_weighted_by_attribution): each row's layer l gets the weight w_l = sum |A_l * dS/dA_l|, its share
of the row's first-order attribution, and the combined map is sum_l w_l M_l / sum_l w_l, scaled to [0, 1]. A level
the score does not read has gradient 0 and weight 0, so its maps (a Score-CAM map there is still a full [0, 1] map of
its masks) do not enter; a row whose weights are all 0 falls back to the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..kernels import numpy_kernels
from .methods.compat import PYTORCH_GRAD_CAM

LOW_RESOLUTION_FORM = ("gradcam", "gradcam++", "xgradcam", "scorecam", "hirescam", "gradcam-elementwise", "layercam",
                       "eigencam", "eigengradcam", "kpcacam", "finercam", "ablationcam", "reciprocam",
                       "reciprocam-gaussian", "shapleycam")


def min_max_scaled(maps: np.ndarray) -> np.ndarray:
    """float32 [N, ...]: each map minus its minimum, over (its new maximum + 1e-7): pytorch-grad-cam's scale_cam_image
    without the resize."""
    maps = np.asarray(maps, dtype=np.float32)
    axes = tuple(range(1, maps.ndim))
    shifted = maps - maps.min(axis=axes, keepdims=True)
    return np.float32(shifted / (np.float32(1e-7) + shifted.max(axis=axes, keepdims=True)))


def upsampling_matrices(low_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(U_y [H, h], U_x [W, w]) float64: the engine's bilinear upsampling (the NumPy kernels') of each axis, read off
    by upsampling the unit vectors."""
    (h, w), (height, width) = low_hw, out_hw
    rows = numpy_kernels.upsample(np.eye(h, dtype=np.float32)[:, :, None], (height, 1))[:, :, 0]  # [h, H]
    cols = numpy_kernels.upsample(np.eye(w, dtype=np.float32)[:, None, :], (1, width))[:, 0, :]  # [w, W]
    return rows.T.astype(np.float64), cols.T.astype(np.float64)


def scaled_before_upsampling(maps: np.ndarray, low_hw: tuple[int, int]) -> np.ndarray:
    """float32 [N, H, W]: up(norm(relu(low))) from the engine's maps [N, H, W] = norm(up(relu(low))), for low maps
    [N, h, w] (see the module docstring)."""
    maps = np.asarray(maps, dtype=np.float64)
    height, width = maps.shape[1:]
    if tuple(low_hw) == (height, width):
        return np.float32(maps)
    u_y, u_x = upsampling_matrices(tuple(low_hw), (height, width))
    low = np.einsum("ih,nhw,jw->nij", np.linalg.pinv(u_y), maps, np.linalg.pinv(u_x))
    return numpy_kernels.upsample(min_max_scaled(np.float32(low)), (height, width)).astype(np.float32)


def attribution_weights(xp, layer_passes: Sequence[tuple], to_host) -> np.ndarray:
    """float64 [L, N]: sum |A * dS/dA| of each layer's (activations, gradients) [N, K, h, w], per row."""
    return np.stack([to_host(xp.abs(activations * gradients).sum(axis=(1, 2, 3))).astype(np.float64)
                     for activations, gradients in layer_passes])


def aggregate_layers(method: str, layer_maps: Sequence[np.ndarray], feature_sizes: Sequence[tuple[int, int]],
                     compat: str | None, weights: np.ndarray | None = None) -> np.ndarray:
    """One float32 map [N, H, W] from each layer's map of `method` (host arrays, in the bundle's layer order):
    pytorch-grad-cam's aggregation with compat="pytorch-grad-cam"; else, with `weights` [L, N]
    (attribution_weights), each row's weighted mean, without them the mean; scaled to [0, 1]."""
    if compat != PYTORCH_GRAD_CAM:
        stacked = np.stack(layer_maps).astype(np.float64)  # [L, N, H, W]
        if weights is None:
            return min_max_scaled(np.float32(stacked.mean(axis=0)))
        totals = weights.sum(axis=0)  # [N]
        share = np.where(totals > 0, weights / np.where(totals > 0, totals, 1.0), 1.0 / len(layer_maps))
        return min_max_scaled(np.float32(np.einsum("ln,lnhw->nhw", share, stacked)))
    per_layer = []
    for maps, low_hw in zip(layer_maps, feature_sizes):
        maps = np.maximum(maps, 0)
        per_layer.append(scaled_before_upsampling(maps, low_hw) if method in LOW_RESOLUTION_FORM else maps)
    return min_max_scaled(np.mean(np.maximum(np.stack(per_layer), 0), axis=0))
