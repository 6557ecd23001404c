"""Faithfulness scores of maps whose every row has its own fixed target (a class over a region, a detected
instance): the loop that segmentation and detection metrics share.

Each row is one image (repeated per instance for detection) with the target the task's scorer rows read. For every
method: Y on the image, O on the image times the map (Average Drop, Increase in Confidence), and the deletion and
insertion curves with their trapezoid areas, all through the metrics' own row writers and batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .confidence import drops, increases, masked_probabilities
from .inputs import device_maps
from .perturbation_curves import curve_probabilities, insertion_baselines, step_counts, trapezoid_auc


@dataclass
class RowScores:
    """Per row (float64 [N]) for one method's maps, with the curves' x [S] and P [N, S]."""

    on_image: np.ndarray  # Y = P(x)
    on_masked: np.ndarray  # O = P(x * map)
    average_drop: np.ndarray  # 100 * max(0, Y - O) / Y
    increase: np.ndarray  # 100 if O > Y else 0
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    fractions: np.ndarray  # x [S]: fraction of pixels changed at each step
    deletion_curve: np.ndarray  # P [N, S]
    insertion_curve: np.ndarray  # P [N, S]


def score_rows(scorer, rows_images, maps: Mapping[str, object], rows, step: int) -> dict[str, RowScores]:
    """RowScores of each method's maps [N, H, W] for the preprocessed `rows_images` [N, 3, H, W] (on the scorer's
    device) and the task's row targets `rows`; `step` pixels change per curve point."""
    n, _, height, width = rows_images.shape
    plane = height * width
    counts = step_counts(plane, step)

    def unchanged(start: int, stop: int, buffer) -> None:
        buffer[: stop - start] = rows_images[start:stop]

    on_image = scorer.to_host(scorer.class_probabilities(n, rows, unchanged))
    baselines = insertion_baselines(scorer, rows_images)
    fractions = counts / plane
    results = {}
    for name, method_maps in maps.items():
        method_maps = device_maps(scorer, method_maps, (n, height, width))
        on_masked = scorer.to_host(masked_probabilities(scorer, rows_images, method_maps, rows))
        deletion = curve_probabilities(scorer, rows_images, method_maps, rows, counts)
        insertion = curve_probabilities(scorer, rows_images, method_maps, rows, counts, baselines)
        results[name] = RowScores(
            on_image=on_image, on_masked=on_masked, average_drop=drops(on_image, on_masked),
            increase=increases(on_image, on_masked), deletion_auc=trapezoid_auc(fractions, deletion),
            insertion_auc=trapezoid_auc(fractions, insertion), fractions=fractions,
            deletion_curve=deletion, insertion_curve=insertion)
    return results
