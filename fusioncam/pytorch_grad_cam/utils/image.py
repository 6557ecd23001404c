"""pytorch-grad-cam's image helpers (`pytorch_grad_cam.utils.image`) on OpenCV and NumPy: the same arithmetic, so
visualisations look the same after switching the import."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ...errors import InputError


def preprocess_image(img: np.ndarray, mean: Sequence[float] = (0.5, 0.5, 0.5),
                     std: Sequence[float] = (0.5, 0.5, 0.5)):
    """An image [H, W, 3] (uint8 0-255 or float in [0, 1]) as a normalised torch tensor [1, 3, H, W], as
    torchvision's ToTensor then Normalize(mean, std) give it."""
    import torch

    array = np.asarray(img)
    if array.ndim != 3:
        raise InputError(f"preprocess_image needs an image [H, W, channels]; got shape {array.shape}")
    values = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
    mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
    std = np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
    normalised = (values - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Standardise, scale by 0.1 around 0.5, clip to [0, 1], as uint8 (for guided-backprop style images)."""
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = np.clip(img * 0.1 + 0.5, 0, 1)
    return np.uint8(img * 255)


def show_cam_on_image(img: np.ndarray, mask: np.ndarray, use_rgb: bool = False, colormap: int = cv2.COLORMAP_JET,
                      image_weight: float = 0.5) -> np.ndarray:
    """The map `mask` [H, W] in [0, 1] as an OpenCV colour map blended over `img` [H, W, 3] float in [0, 1]:
    uint8 [H, W, 3], BGR unless use_rgb."""
    if np.max(img) > 1:
        raise InputError("show_cam_on_image: the image must be float32 in [0, 1] (divide uint8 images by 255)")
    if not 0 <= image_weight <= 1:
        raise InputError(f"show_cam_on_image: image_weight must be in [0, 1]; got {image_weight}")
    heatmap = cv2.applyColorMap(np.uint8(255 * mask), colormap)
    if use_rgb:
        heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    cam = (1 - image_weight) * (np.float32(heatmap) / 255) + image_weight * img
    cam = cam / np.max(cam)
    return np.uint8(255 * cam)


def scale_cam_image(cam, target_size: tuple[int, int] | None = None) -> np.ndarray:
    """Each map minus its minimum, divided by (1e-7 + its maximum), resized to target_size (width, height) with
    cv2.resize: float32 [N, ...]."""
    result = []
    for img in cam:
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        if target_size is not None:
            img = cv2.resize(np.float32(img), tuple(int(v) for v in target_size))
        result.append(img)
    return np.float32(result)


__all__ = ["preprocess_image", "deprocess_image", "show_cam_on_image", "scale_cam_image"]
