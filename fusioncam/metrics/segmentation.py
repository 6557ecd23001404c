"""Faithfulness of segmentation explanations: the classifier protocols (metrics/) with the region probability P.

For each image, the class and region an explanation explained (its `classes` and `region_weights`) stay fixed, and
every perturbed image is scored by P (docs/segmentation.md) through the explainer's batched segmentation scorer:

- Average Drop and Increase in Confidence: Y = P(x), O = P(x * map);
- deletion and insertion AUC: P as the map's top pixels are set to 0 (deletion) or revealed on the blurred image
  (insertion), `step` pixels at a time, area by the trapezoid rule over the fraction of pixels changed.

The metrics' own row writers and batching are reused: each row's target is its image's class and region
(tasks/segmentation.py's RegionTargets), which the scorer feeds with the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..errors import InputError
from ..tasks.segmentation import RegionTargets, SegmentationExplanation
from .confidence import drops, increases, masked_probabilities
from .inputs import checked_images, checked_step, device_maps
from .perturbation_curves import DEFAULT_STEP, curve_probabilities, insertion_baselines, step_counts, trapezoid_auc


@dataclass
class SegmentationScores:
    """Per image (float64 [N]) for one method's maps, with the curves' x [S] and P [N, S]."""

    on_image: np.ndarray  # Y = P(x)
    on_masked: np.ndarray  # O = P(x * map)
    average_drop: np.ndarray  # 100 * max(0, Y - O) / Y
    increase: np.ndarray  # 100 if O > Y else 0
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray
    fractions: np.ndarray  # x [S]: fraction of pixels changed at each step
    deletion_curve: np.ndarray  # P [N, S]
    insertion_curve: np.ndarray  # P [N, S]


def evaluate_segmentation_maps(explainer, images, explanation: SegmentationExplanation,
                               maps: Mapping[str, object] | None = None,
                               step: int = DEFAULT_STEP) -> dict[str, SegmentationScores]:
    """Scores of each method's maps [N, H, W] (default: the explanation's own) for the explanation's classes and
    regions; `images` are the preprocessed images the explanation was made from."""
    if explainer.task.name != "segmentation":
        raise InputError("evaluate_segmentation_maps needs a segmentation bundle; use fusioncam.metrics for classifiers")
    if not isinstance(explanation, SegmentationExplanation):
        raise InputError(f"explanation must be the SegmentationExplanation of these images, got "
                         f"{type(explanation).__name__}")
    maps = dict(explanation.maps if maps is None else maps)
    with explainer.scorer.in_use("evaluate segmentation maps") as scorer:
        images = checked_images(scorer, images, explainer.bundle.manifest.input_size)
        n, _, height, width = images.shape
        if n != len(explanation):
            raise InputError(f"{n} images given for an explanation of {len(explanation)}; pass the explained images")
        plane = height * width
        counts = step_counts(plane, checked_step(step, plane))
        xp = scorer.xp
        # each image's target: the explanation's class and region of that image
        rows = RegionTargets(scorer.asarray(explanation.classes), scorer.asarray(explanation.region_weights),
                             xp.arange(n, dtype=xp.int64))

        def unchanged(start: int, stop: int, buffer) -> None:
            buffer[: stop - start] = images[start:stop]

        on_image = scorer.to_host(scorer.class_probabilities(n, rows, unchanged))
        baselines = insertion_baselines(scorer, images)
        results = {}
        for name, method_maps in maps.items():
            method_maps = device_maps(scorer, method_maps, (n, height, width))
            on_masked = scorer.to_host(masked_probabilities(scorer, images, method_maps, rows))
            deletion = curve_probabilities(scorer, images, method_maps, rows, counts)
            insertion = curve_probabilities(scorer, images, method_maps, rows, counts, baselines)
            fractions = counts / plane
            results[name] = SegmentationScores(
                on_image=on_image, on_masked=on_masked, average_drop=drops(on_image, on_masked),
                increase=increases(on_image, on_masked), deletion_auc=trapezoid_auc(fractions, deletion),
                insertion_auc=trapezoid_auc(fractions, insertion), fractions=fractions,
                deletion_curve=deletion, insertion_curve=insertion)
        return results
