"""Pictures of segmentation explanations: the predicted segmentation colour-coded, the explained region outlined,
and each method's map, side by side (visualize.py's overlays and panel layout)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .pictures import overlay, tile_size, tiled_panel

OUTLINE_COLOR = (255, 255, 255)


def class_colors(num_classes: int) -> np.ndarray:
    """uint8 [C, 3]: a fixed, well-spread colour per class (golden-ratio hues), class 0 dark grey (background)."""
    hues = (np.arange(num_classes) * 0.618033988749895 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full(num_classes, 200, np.uint8), np.full(num_classes, 230, np.uint8)], axis=1)
    colors = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    colors[0] = (60, 60, 60)
    return colors


def _resized(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """An [h, w] (or [h, w, 3]) array resized to (H, W)."""
    if array.shape[:2] == tuple(size):
        return array
    mode = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(array, (size[1], size[0]), interpolation=mode)


def segmentation_overlay(image_rgb: np.ndarray, predicted: np.ndarray, num_classes: int,
                         alpha: float = 0.55) -> np.ndarray:
    """uint8 RGB: the image blended with its predicted classes [h, w] (each class its colour), at the image's size."""
    colors = class_colors(num_classes)[_resized(predicted.astype(np.int32), image_rgb.shape[:2], nearest=True)]
    return np.rint((1 - alpha) * image_rgb + alpha * colors).astype(np.uint8)


def outline_region(picture_rgb: np.ndarray, region_weights: np.ndarray, color=OUTLINE_COLOR) -> np.ndarray:
    """A copy of the picture with the border of the explained region (weights >= 0.5, resized) drawn on it."""
    inside = (_resized(region_weights.astype(np.float32), picture_rgb.shape[:2], nearest=False) >= 0.5)
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(picture_rgb.copy())
    cv2.drawContours(out, contours, -1, color, thickness=max(1, picture_rgb.shape[0] // 150), lineType=cv2.LINE_8)
    return out


def segmentation_panel(image_rgb: np.ndarray, explanation, index: int, methods: Sequence[str] | None = None,
                       tile_height: int = 224, colormap: str = "jet", alpha: float = 0.5,
                       labels: dict[str, str] | None = None) -> np.ndarray:
    """uint8 RGB panel for image `index` of a SegmentationExplanation: the predicted segmentation with the explained
    region outlined, then each method's map over the image (the region outlined too), under a title naming the class
    and its region probability."""
    methods = list(explanation.maps) if methods is None else list(methods)
    height, width = tile_size(image_rgb.shape[:2], tile_height)
    image = _resized(np.ascontiguousarray(image_rgb), (height, width), nearest=False)
    weights = explanation.region_weights[index]
    segmented = segmentation_overlay(image, explanation.predicted[index], explanation.logits.shape[1])
    tiles = [("predicted segmentation", outline_region(segmented, weights))]
    for method in methods:
        tiles.append(((labels or {}).get(method, method),
                      outline_region(overlay(image, explanation.maps[method][index], colormap, alpha), weights)))
    title = (f"{explanation.class_name(index)} over the outlined region: region probability "
             f"{float(explanation.probabilities[index]):.3f}")
    return tiled_panel(tiles, title, height, width)
