"""Segmentation pictures: class colours blended exactly, the region's border outlined and nothing else touched."""

from __future__ import annotations

import numpy as np

from fusioncam.report.segmentation_pictures import OUTLINE_COLOR, class_colors, outline_region, segmentation_overlay


def test_overlay_blends_each_pixel_with_its_class_colour() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    predicted = rng.integers(0, 5, (10, 15))  # 4x smaller: nearest-neighbour upsampling of the classes
    out = segmentation_overlay(image, predicted, 5, alpha=0.25)
    classes = np.repeat(np.repeat(predicted, 4, axis=0), 4, axis=1)
    want = np.rint(0.75 * image + 0.25 * class_colors(5)[classes]).astype(np.uint8)
    np.testing.assert_array_equal(out, want)
    assert len({tuple(c) for c in class_colors(5)}) == 5  # every class its own colour


def test_outline_marks_the_region_border_only() -> None:
    image = np.zeros((50, 50, 3), np.uint8)
    weights = np.zeros((50, 50), np.float32)
    weights[10:30, 15:40] = 1.0
    out = outline_region(image, weights)
    marked = (out == OUTLINE_COLOR).all(axis=2)
    assert marked[10, 20] and marked[29, 20] and marked[20, 15] and marked[20, 39]  # on each side of the box
    assert not marked[20, 27] and not marked[0:5].any() and not marked[45:].any()  # inside and far outside: untouched
    np.testing.assert_array_equal(image, 0)  # the input picture is not modified
