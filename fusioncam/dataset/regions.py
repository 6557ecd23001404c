"""The `region` column of an explain-dataset input table: where each row's class is explained (segmentation bundles).

A row's region is text: empty or null or "predicted" (where the model predicts the class; the default), "all",
"x0,y0,x1,y1" (a box in the model's input pixels, x0 <= x < x1, y0 <= y < y1), or the path or URI of a mask image
(0 outside, non-zero inside; resized to the model's input with nearest-neighbour sampling, as the image is). A
relative mask path is taken from the table's own folder. A list of four integers is a box too. A row whose region
cannot be read becomes an error row naming it; the other rows go on.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError
from ..tasks.region_masks import decode_mask
from ..tasks.segmentation_regions import box_region

REGION_COLUMN = "region"
REGION_WORDS = ("predicted", "all")


def region_text(value: Any, base: str | None = None) -> str | None:
    """A table cell as the row's region text: a list of 4 numbers as 'x0,y0,x1,y1', a relative mask path joined to
    the table's folder `base`; None (predicted) for null or empty."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    text = str(value).strip()
    if not text:
        return None
    if text in REGION_WORDS or _box_numbers(text) is not None or "://" in text or os.path.isabs(text) or base is None:
        return text
    return os.path.join(base, text)


def _box_numbers(text: str) -> list[int] | None:
    parts = text.split(",")
    if len(parts) == 4 and all(p.strip().lstrip("-").isdigit() for p in parts):
        return [int(p) for p in parts]
    return None


def row_region(value: str | None, size: tuple[int, int], source: str):
    """The region Explainer.explain takes for one row, or an InputError naming the row's source and the region."""
    if value is None or value == "predicted":
        return "predicted"
    if value == "all":
        return "all"
    box = _box_numbers(value)
    if box is not None:
        return _checked_box(box, size, source)
    from .sources import read_source_bytes

    data, error = read_source_bytes(value)
    if error is not None:
        raise InputError(f"{source}: its region mask cannot be read: {error} (a region is predicted, all, "
                         f"x0,y0,x1,y1 or the path of a mask image)")
    return decode_mask(data, size, f"{source}: region mask {value!r}")


def _checked_box(box: list[int], size: tuple[int, int], source: str) -> tuple[int, ...]:
    box_region(box, size, source)  # an InputError when empty or outside the input
    return tuple(box)
