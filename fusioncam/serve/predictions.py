"""What comes back for one image: its top-k classes with names and probabilities, and PNG overlays of its maps."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from ..report.pictures import overlay


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """float64 [N, C] softmax of logits [N, C] with the max subtracted (as runtime.betas.class_probabilities)."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(classes int64 [N, k], probabilities float64 [N, k]): the k most probable classes, most probable first
    (ties in class order)."""
    probabilities = softmax_rows(logits)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(probabilities, order, axis=1)


def class_label(class_names: list[str] | None, index: int) -> str:
    """A class's name, or 'class N' for a bundle without names."""
    if class_names and 0 <= index < len(class_names):
        return class_names[index]
    return f"class {index}"


def overlay_png_base64(picture: np.ndarray, cam: np.ndarray, colormap: str, alpha: float) -> str:
    """The map over the picture (fusioncam.overlay, at the picture's resolution) as a base64 PNG."""
    blended = overlay(picture, cam, colormap=colormap, alpha=alpha)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 RGB image as PNG
        raise RuntimeError("OpenCV could not encode the overlay as PNG")
    return base64.b64encode(encoded.tobytes()).decode("ascii")
