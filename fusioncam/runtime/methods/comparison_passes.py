"""More explain passes of the same images for other classes (FinerCAM's comparison classes), with the explained
image's region kept fixed on a segmentation bundle, so every class's score S_l = sum_ij w(i, j) y_l(i, j) uses the
same w as the explained one (docs/segmentation.md)."""

from __future__ import annotations

from typing import Callable

from ...graph_names import REGION, REGION_WEIGHTS, TARGET
from ...kernels.array_math import array_module


def fixed_regions(regions, weights):
    """The explain feed's regions [N, H, W] with each "predicted" row (any negative value) replaced by that image's
    region weights w [N, H', W'] spread over the input by nearest neighbour: the graph's area resize gives w back
    exactly where H' divides H and W' divides W (comparison_explainer's callers check that it did)."""
    xp = array_module(regions, weights)
    height, width = int(regions.shape[1]), int(regions.shape[2])
    out_h, out_w = int(weights.shape[1]), int(weights.shape[2])
    rows = (xp.arange(height) * out_h) // height
    cols = (xp.arange(width) * out_w) // width
    spread = weights[:, rows][:, :, cols].astype(regions.dtype)
    predicted = (regions < 0).reshape(regions.shape[0], -1).any(axis=1)
    return xp.where(predicted[:, None, None], spread, regions)


def comparison_explainer(explain: Callable, feed: dict, graph: dict) -> Callable | None:
    """(images, classes) -> the explain pass's outputs for those classes, through `explain(images, feed)`: a
    classifier's feed is the classes alone; a segmentation bundle's adds the explained regions, fixed
    (fixed_regions). None for any other feed."""
    if set(feed) == {TARGET}:
        return lambda images, classes: explain(images, {TARGET: classes})
    if set(feed) == {TARGET, REGION} and REGION_WEIGHTS in graph:
        regions = fixed_regions(feed[REGION], graph[REGION_WEIGHTS])
        return lambda images, classes: explain(images, {TARGET: classes, REGION: regions})
    return None
