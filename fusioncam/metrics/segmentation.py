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

from typing import Mapping

from ..errors import InputError
from ..tasks.segmentation import RegionTargets, SegmentationExplanation
from .inputs import checked_images, checked_step
from .perturbation_curves import DEFAULT_STEP
from .row_scores import RowScores, score_rows


SegmentationScores = RowScores  # per image: Y, O, AD, IC, the AUCs and curves (metrics/row_scores.py)


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
        xp = scorer.xp
        # each image's target: the explanation's class and region of that image
        rows = RegionTargets(scorer.asarray(explanation.classes), scorer.asarray(explanation.region_weights),
                             xp.arange(n, dtype=xp.int64))
        return score_rows(scorer, images, maps, rows, checked_step(step, height * width))
