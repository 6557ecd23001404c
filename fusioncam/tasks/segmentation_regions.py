"""The `regions=` argument of a segmentation explanation, checked and turned into the explain graph's `region` input.

Per image: "predicted" (or None: where the model predicts the explained class, the default), "all" (the whole
image), a box (x0, y0, x1, y1) in input pixels (x0 <= x < x1, y0 <= y < y1), or a mask [H, W] at the input
resolution with values in [0, 1] (bool or float). One value for every image, or a sequence of N, or an [N, H, W]
array of masks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError
from ..graph_names import PREDICTED_REGION

REGION_WORDS = ("predicted", "all")


def box_region(box: Sequence, size: tuple[int, int], position: str) -> np.ndarray:
    """A [H, W] mask of ones inside the box (x0, y0, x1, y1), checked against the input size."""
    height, width = size
    if len(box) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box):
        raise InputError(f"the region box for {position} must be 4 integers (x0, y0, x1, y1) in input pixels; got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise InputError(f"the region box {tuple(box)} for {position} is empty or outside the {width}x{height} input: "
                         f"it needs 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    mask = np.zeros(size, np.float32)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def _mask_region(mask, size: tuple[int, int], position: str) -> np.ndarray:
    """A [H, W] mask at the input resolution with values in [0, 1]."""
    mask = np.asarray(mask)
    if mask.shape != tuple(size):
        raise InputError(f"the region mask for {position} has shape {mask.shape}; it must be [H, W] = {list(size)}, "
                         f"the model's input size (resize it with the image)")
    if mask.dtype.kind not in "biuf":
        raise InputError(f"the region mask for {position} has dtype {mask.dtype}; give bool or numbers in [0, 1]")
    mask = mask.astype(np.float32)
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise InputError(f"the region mask for {position} has values outside [0, 1] (min {mask.min()}, max "
                         f"{mask.max()}); give a bool mask or weights in [0, 1]")
    if mask.max() == 0:
        raise InputError(f"the region mask for {position} is all zeros: there is no region to explain")
    return mask


def _one_region(value, size: tuple[int, int], position: str) -> np.ndarray:
    """One image's region row for the explain graph (a predicted region is a row of -1)."""
    if value is None or (isinstance(value, str) and value == "predicted"):
        return np.full(size, PREDICTED_REGION, np.float32)
    if isinstance(value, str):
        if value == "all":
            return np.ones(size, np.float32)
        raise InputError(f"unknown region {value!r} for {position}; use 'predicted', 'all', a box (x0, y0, x1, y1) "
                         f"or a mask [H, W]")
    if isinstance(value, (tuple, list)):
        return box_region(value, size, position)
    return _mask_region(value, size, position)


def resolve_regions(regions, n: int, size: tuple[int, int]) -> np.ndarray:
    """float32 [N, H, W]: each image's region mask, or a row of -1 for the predicted region."""
    if regions is None or isinstance(regions, str) or isinstance(regions, tuple):
        return np.stack([_one_region(regions, size, "all images")] * n)
    if isinstance(regions, np.ndarray) or hasattr(regions, "__array__"):
        array = np.asarray(regions)
        if array.ndim == 2:
            return np.stack([_mask_region(array, size, "all images")] * n)
        if array.ndim == 3 and array.shape[0] == n:
            return np.stack([_mask_region(array[i], size, f"image {i}") for i in range(n)])
        raise InputError(f"regions array has shape {array.shape}; give one mask [H, W] for all images or [N, H, W] "
                         f"with N = {n}")
    if not isinstance(regions, Sequence):
        raise InputError(f"regions must be 'predicted', 'all', a box, a mask, or N of them; got {type(regions).__name__}")
    if len(regions) != n:
        raise InputError(f"{len(regions)} regions given for {n} images; give one per image, one for all, or None")
    return np.stack([_one_region(value, size, f"image {i}") for i, value in enumerate(regions)])
