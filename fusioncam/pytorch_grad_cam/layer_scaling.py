"""A layer's map scaled as pytorch-grad-cam scales it before averaging several target layers, from fusioncam's map.

pytorch-grad-cam's compute_cam_per_layer forms each layer's map as up(norm(relu(low))): the low-resolution map is
scaled to [0, 1] and then resized to the input; aggregate_multi_layers averages those and scales the mean. fusioncam's
engine ends every map of this kind with norm(up(relu(low))) (runtime/methods/engine.py, low_resolution_map and
compat="pytorch-grad-cam"'s Score-CAM map): scaled after resizing. With one layer both give the same map; with
several they weigh the layers differently, because bilinear upsampling does not reach the low-resolution maximum
(0.06-0.11 apart on ResNet-18 layer3 + layer4).

Bilinear upsampling is a linear map U = U_y (x) U_x with full column rank for an enlargement, and it keeps constants,
so the engine's map M = (U relu(low) - m) / d determines relu(low) up to the same affine change: the least-squares
solve L' = U_y^+ M (U_x^+)^T gives (relu(low) - m) / d exactly (up to float rounding), and norm(L') = norm(relu(low)),
as the min-max scaling removes any positive affine change. up(norm(L')) is then pytorch-grad-cam's per-layer map,
but for its 1e-7 in the divisor (max - min + 1e-7): a layer whose low-resolution map spans r is scaled by
r / (r + 1e-7) there and by 1 here, a difference of 1e-7 / r (1e-4 for r = 1e-3).
This holds for every map of the form norm(up(relu(low))) (the gradient methods, Score-CAM, the eigen methods,
KPCA-CAM, FinerCAM, Ablation-CAM, Recipro-CAM), so those need no second computation; Fusion-CAM, Group-CAM and
Union-CAM combine maps at the input resolution and are not of that form (pytorch-grad-cam has no such methods; their
layers' maps are averaged as they are).
"""

from __future__ import annotations

import numpy as np

from ..kernels import numpy_kernels
from .utils.image import scale_cam_image

LOW_RESOLUTION_FORM = ("gradcam", "gradcam++", "xgradcam", "scorecam", "hirescam", "gradcam-elementwise", "layercam",
                       "eigencam", "eigengradcam", "kpcacam", "finercam", "ablationcam", "reciprocam",
                       "reciprocam-gaussian", "shapleycam")


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
    return scale_cam_image(np.float32(low), (width, height))
