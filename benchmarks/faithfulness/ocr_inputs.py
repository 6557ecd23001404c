"""rapidocr's preprocessing of scikit-image's text photographs, and text-line crops found by the shipped detector.

As rapidocr-onnxruntime 1.4.4 does (rapidocr_onnxruntime/ch_ppocr_cls/text_cls.py and ch_ppocr_det/utils.py, read
from its wheel; its config.yaml gives the numbers):

- classifier (`cls_image_shape: [3, 48, 192]`): resize a crop to height 48 keeping its aspect ratio (OpenCV's
  bilinear `cv2.resize`), width `ceil(48 * w / h)` capped at 192, scale `(x / 255 - 0.5) / 0.5`, and pad on the right
  with zeros (normalised: grey) to width 192;
- detector (`mean = std = [0.5, 0.5, 0.5]`, not ImageNet's): `(x / 255 - 0.5) / 0.5` at a size whose sides are
  multiples of 32. rapidocr's default `limit_type: min, limit_side_len: 736` upscales the short side to 736 (page.png:
  736 x 1472); here each side is rounded to the nearest multiple of 32 without scaling (its `limit_type: max` rule
  for an image under the limit), so that the masked forwards of Score-CAM and its kin fit a 2-core machine.

rapidocr reads images as BGR; scikit-image's page.png and text.png are grey, so RGB and BGR are the same array.
The detector's post-processing thresholds its probability map at `thresh: 0.3` (`det_db_thresh`): the explained
region is those pixels.
"""

from __future__ import annotations

import math

import numpy as np

CLASSIFIER_SIZE = (48, 192)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
TEXT_THRESHOLD = 0.3  # rapidocr's det_db_thresh
UNCLIP_RATIO = 1.6  # rapidocr's unclip_ratio
LABELS = ("0", "180")  # rapidocr's cls label_list


def grey_photo(name: str) -> np.ndarray:
    """scikit-image's grey photograph `name` ('page' or 'text') as uint8 RGB [H, W, 3]."""
    import skimage.data

    grey = getattr(skimage.data, name)()
    return np.repeat(grey[:, :, None], 3, axis=2)


def normalise(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W], (x / 255 - 0.5) / 0.5."""
    return ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1).copy()


def detector_size(shape: tuple[int, ...]) -> tuple[int, int]:
    """Each side rounded to the nearest multiple of 32 (at least 32), as rapidocr's DetPreProcess.resize does."""
    return tuple(max(32, int(round(side / 32) * 32)) for side in shape[:2])


def detector_input(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the resized uint8 RGB [H, W, 3], its normalised float32 [3, H, W]) at `detector_size`."""
    import cv2

    height, width = detector_size(rgb.shape)
    resized = cv2.resize(rgb, (width, height))
    return resized, normalise(resized)


def classifier_input(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rapidocr's TextClassifier.resize_norm_img: (the padded uint8 RGB [48, 192, 3] it sees, with the pad drawn
    grey, and the normalised float32 [3, 48, 192])."""
    import cv2

    height, width = CLASSIFIER_SIZE
    h, w = crop.shape[:2]
    resized_w = min(width, int(math.ceil(height * w / float(h))))
    resized = cv2.resize(crop, (resized_w, height))
    padded = np.zeros((3, height, width), np.float32)
    padded[:, :, :resized_w] = normalise(resized)
    seen = np.full((height, width, 3), 127, np.uint8)  # normalised 0 = x/255 of 0.5
    seen[:, :resized_w] = resized
    return seen, padded


def text_line_boxes(probability: np.ndarray, min_width: int = 24, limit: int = 4,
                    unclip: bool = False) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1), x1/y1 exclusive, around the widest connected regions of `probability > 0.3`, widest
    first, widened on every side by a third of their height, or with `unclip` by rapidocr's unclip distance
    `area * 1.6 / perimeter` (DBNet predicts shrunk text kernels; rapidocr's `unclip_ratio: 1.6` grows each box back
    before cropping; on page.png, whose lines are 16 pixels apart, that takes in parts of the neighbouring lines)."""
    from scipy import ndimage

    labels, count = ndimage.label(probability > TEXT_THRESHOLD)
    boxes = []
    for found in ndimage.find_objects(labels):
        ys, xs = found
        x0, y0, x1, y1 = xs.start, ys.start, xs.stop, ys.stop
        if x1 - x0 < min_width or (x1 - x0) < 2 * (y1 - y0):
            continue
        width, height = x1 - x0, y1 - y0
        margin = int(round(width * height * UNCLIP_RATIO / (2 * (width + height)))) if unclip else max(2, height // 3)
        boxes.append((max(0, x0 - margin), max(0, y0 - margin), min(probability.shape[1], x1 + margin),
                      min(probability.shape[0], y1 + margin)))
    boxes.sort(key=lambda b: b[2] - b[0], reverse=True)
    return boxes[:limit]


__all__ = ["CLASSIFIER_SIZE", "LABELS", "MEAN", "STD", "TEXT_THRESHOLD", "classifier_input", "detector_input",
           "detector_size", "grey_photo", "normalise", "text_line_boxes"]
