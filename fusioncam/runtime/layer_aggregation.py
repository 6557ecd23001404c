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


def aggregate_layers(method: str, layer_maps: Sequence[np.ndarray], feature_sizes: Sequence[tuple[int, int]],
                     compat: str | None) -> np.ndarray:
    """One float32 map [N, H, W] from each layer's map of `method` (host arrays, in the bundle's layer order):
    pytorch-grad-cam's aggregation with compat="pytorch-grad-cam", else the mean scaled to [0, 1]."""
    if compat != PYTORCH_GRAD_CAM:
        return min_max_scaled(np.mean(np.stack(layer_maps), axis=0))
    per_layer = []
    for maps, low_hw in zip(layer_maps, feature_sizes):
        maps = np.maximum(maps, 0)
        per_layer.append(scaled_before_upsampling(maps, low_hw) if method in LOW_RESOLUTION_FORM else maps)
    return min_max_scaled(np.mean(np.maximum(np.stack(per_layer), 0), axis=0))
