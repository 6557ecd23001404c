"""Faithfulness of detection explanations, per instance: the classifier protocols (metrics/) with D-RISE's matched
score as the score.

Each explained instance (a row of a DetectionExplanation) keeps its class and reference box; every perturbed copy
of its image is scored by the scorer graph's similarity of the best-matching prediction, max over anchors of
IoU(box_a, reference box) x score[a, class] (D-RISE's protocol; tasks/detection.py):

- Average Drop and Increase in Confidence: Y = the matched score on the image, O = on the image times the map;
- deletion and insertion AUC: the matched score as the map's top pixels are set to 0 (deletion) or revealed on the
  blurred image (insertion), `step` pixels at a time, area by the trapezoid rule over the fraction changed.

The metrics' own row writers and batching are reused, with one row per instance (its image repeated).
"""

from __future__ import annotations

from typing import Mapping

from ..errors import InputError
from ..tasks.detection import DetectionExplanation, InstanceTargets
from .inputs import checked_images, checked_step
from .perturbation_curves import DEFAULT_STEP
from .row_scores import RowScores as InstanceScores, score_rows  # per instance: Y, O, AD, IC, the AUCs and curves


def evaluate_detection_maps(explainer, images, explanation: DetectionExplanation,
                            maps: Mapping[str, object] | None = None,
                            step: int = DEFAULT_STEP) -> dict[str, InstanceScores]:
    """Scores of each method's maps [I, H, W] (default: the explanation's own), one row per instance of the
    explanation; `images` [N, 3, H, W] are the preprocessed images it was made from (rows pick theirs by
    explanation.image_index)."""
    if explainer.task.name != "detection":
        raise InputError("evaluate_detection_maps needs a detection bundle; use fusioncam.metrics for classifiers")
    if not isinstance(explanation, DetectionExplanation):
        raise InputError(f"explanation must be the DetectionExplanation of these images, got "
                         f"{type(explanation).__name__}")
    maps = dict(explanation.maps if maps is None else maps)
    with explainer.scorer.in_use("evaluate detection maps") as scorer:
        images = checked_images(scorer, images, explainer.bundle.manifest.input_size)
        _, _, height, width = images.shape
        if len(explanation.image_index) and int(explanation.image_index.max()) >= images.shape[0]:
            raise InputError(f"{images.shape[0]} images given for an explanation of image "
                             f"{int(explanation.image_index.max())}; pass the explained images")
        rows_images = images[scorer.asarray(explanation.image_index)]
        rows = InstanceTargets(scorer.asarray(explanation.classes), scorer.asarray(explanation.reference_boxes))
        return score_rows(scorer, rows_images, maps, rows, checked_step(step, height * width))


__all__ = ["InstanceScores", "evaluate_detection_maps"]
