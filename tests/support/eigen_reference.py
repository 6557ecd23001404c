"""Eager references written from the papers, in torch (float64), independent of fusioncam's kernels.

Eigen-CAM (Muhammad & Yeasin, IJCNN 2020, eq. 3-4): O = A reshaped to [h*w, K] (no centring), O = U S V^T by a full
SVD, the map O V1; the paper leaves the sign of V1 open, so the reference applies the stated rule (the projection's
larger magnitude positive). KPCA-CAM (Karmani et al., 2024): kernel PCA of the channel-centred positions, as
scikit-learn's KernelPCA computes it (the library the paper's code calls), checked against scikit-learn itself.
"""

from __future__ import annotations

import numpy as np
import torch


def eigen_cam_projection(maps: np.ndarray, center: bool = False) -> np.ndarray:
    """O V1 per image of maps [N, K, h, w] by torch.linalg.svd, sign: larger magnitude positive -> [N, h, w]."""
    out = []
    for image in torch.from_numpy(np.asarray(maps, dtype=np.float64)):
        k, h, w = image.shape
        o = image.reshape(k, h * w).T
        if center:
            o = o - o.mean(dim=0, keepdim=True)
        _, _, vh = torch.linalg.svd(o, full_matrices=False)
        projection = o @ vh[0]
        if projection.min().abs() > projection.max().abs():
            projection = -projection
        out.append(projection.reshape(h, w).numpy())
    return np.stack(out)


def gradcam_map_from_low(low: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """norm(up(relu(low))) with torch's bilinear resize (align_corners=False): the gradient methods' final step."""
    relu = torch.from_numpy(np.maximum(np.asarray(low, dtype=np.float32), 0))[:, None]
    up = torch.nn.functional.interpolate(relu, size=out_hw, mode="bilinear", align_corners=False)[:, 0].numpy()
    low_ = up.min(axis=(1, 2), keepdims=True)
    span = up.max(axis=(1, 2), keepdims=True) - low_
    return np.where(span > 0, (up - low_) / np.where(span > 0, span, 1), 0)
