"""Gaussian blur of image batches on the CPU: OpenCV's `GaussianBlur` per channel (the insertion metric's baseline)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["gaussian_blur"]


def gaussian_blur(images: np.ndarray, ksize: int = 51, sigma: float = 50.0) -> np.ndarray:
    """Each [H, W] plane of images [..., H, W] blurred with a ksize x ksize Gaussian (float32 weights from
    cv2.getGaussianKernel), rows then columns, reflect-101 borders: cv2.GaussianBlur(plane, (ksize, ksize), sigma)."""
    images = np.asarray(images, dtype=np.float32)
    planes = np.ascontiguousarray(images.reshape(-1, *images.shape[-2:]))
    out = np.empty_like(planes)
    for index, plane in enumerate(planes):
        out[index] = cv2.GaussianBlur(plane, (ksize, ksize), sigma, borderType=cv2.BORDER_REFLECT_101)
    return out.reshape(images.shape)
