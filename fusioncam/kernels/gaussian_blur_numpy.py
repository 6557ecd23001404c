"""Group-CAM's blurred baseline on the CPU: OpenCV's separable Gaussian blur with its reflect-101 border."""

from __future__ import annotations

import functools

import cv2
import numpy as np

__all__ = ["gaussian_blurred_images"]


@functools.lru_cache(maxsize=8)
def gaussian_taps(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV's 1-D Gaussian taps, float32 [ksize]: exp(-(i - (ksize-1)/2)^2 / (2 sigma^2)), normalised in float64."""
    if ksize < 1 or ksize % 2 == 0 or not sigma > 0:
        raise ValueError(f"the Gaussian needs an odd ksize >= 1 and sigma > 0, got ksize={ksize}, sigma={sigma}")
    taps = cv2.getGaussianKernel(int(ksize), float(sigma), ktype=cv2.CV_32F).ravel()
    taps.setflags(write=False)
    return taps


def gaussian_blurred_images(images: np.ndarray, ksize: int = 51, sigma: float = 50.0) -> np.ndarray:
    """Every channel of images [N, C, H, W] blurred by a ksize x ksize Gaussian of std sigma, float32.

    Reflect-101 border (dcb|abcdefgh|gfe), reflected again as often as a small image needs; float32 sums.
    """
    images = np.asarray(images, dtype=np.float32)
    gaussian_taps(int(ksize), float(sigma))  # the same argument checks as the GPU
    out = np.empty_like(images)
    for n in range(images.shape[0]):
        for c in range(images.shape[1]):
            out[n, c] = cv2.GaussianBlur(np.ascontiguousarray(images[n, c]), (int(ksize), int(ksize)), float(sigma),
                                         sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT_101)
    return out
