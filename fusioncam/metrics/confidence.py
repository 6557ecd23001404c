"""Average Drop and Increase in Confidence (the Grad-CAM++ / Score-CAM protocol): the image against image * map."""

from __future__ import annotations

import numpy as np

from ..kernels import Array
from ..runtime.scorer import Scorer
from .inputs import checked_inputs
from .perturbation_batches import image_predictions


def masked_probabilities(scorer: Scorer, images: Array, maps: Array, classes: Array) -> Array:
    """O: float64 [N] on the device, each image's class probability on the image times its map [H, W]."""
    xp = scorer.xp

    def write(start: int, stop: int, buffer) -> None:
        rows = xp.arange(start, stop, dtype=xp.int64)
        scorer.kernels.write_map_masked_inputs(images, maps[start:stop], rows, buffer, 0)

    return scorer.class_probabilities(int(images.shape[0]), classes, write)


def confidence_pair(explainer, images, maps, targets=None) -> tuple[np.ndarray, np.ndarray]:
    """(Y, O) float64 [N]: each image's class probability on the image, and on the image times its map."""
    with explainer.scorer.in_use("score masked images") as scorer:
        images, maps, targets = checked_inputs(explainer, images, maps, targets)
        classes, on_image = image_predictions(scorer, images, targets)
        on_masked = masked_probabilities(scorer, images, maps, classes)
        return scorer.to_host(on_image), scorer.to_host(on_masked)


def drops(on_image: np.ndarray, on_masked: np.ndarray) -> np.ndarray:
    """Per image, 100 * max(0, Y - O) / Y (0 where Y is 0)."""
    drop = np.maximum(on_image - on_masked, 0.0)
    return 100.0 * np.divide(drop, on_image, out=np.zeros_like(drop), where=on_image > 0)


def increases(on_image: np.ndarray, on_masked: np.ndarray) -> np.ndarray:
    """Per image, 100 if O > Y else 0."""
    return 100.0 * (on_masked > on_image)


def average_drop(explainer, images, maps, targets=None) -> float:
    """Average Drop in %: 100 * mean over images of max(0, Y - O) / Y (lower is better)."""
    return float(drops(*confidence_pair(explainer, images, maps, targets)).mean())


def increase_in_confidence(explainer, images, maps, targets=None) -> float:
    """Increase in Confidence in %: 100 * the fraction of images with O > Y (higher is better)."""
    return float(increases(*confidence_pair(explainer, images, maps, targets)).mean())
