"""Every metric for several methods' maps of the same images: per-image values and the curves, for the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..runtime.input_checks import check_images, resolve_targets
from ..runtime.methods import check_methods
from .confidence import confidence_pair, drops, increases
from .inputs import checked_step
from .perturbation_batches import target_classes
from .perturbation_curves import DEFAULT_STEP, deletion_curve, insertion_curve, trapezoid_auc

METRICS = ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")

Curve = tuple[np.ndarray, np.ndarray]  # (x [S], p [N, S])


@dataclass
class MethodScores:
    """One method's metrics per image (each float64 [N]; their means are the metric functions' results) and curves."""

    per_image: dict[str, np.ndarray]
    deletion: Curve
    insertion: Curve


@dataclass
class Evaluation:
    """Scores of each method (in the order asked for) on the same images and classes."""

    scores: dict[str, MethodScores]
    names: list[str]
    classes: np.ndarray  # int64 [N]
    step: int


def evaluate_maps(explainer, images, maps: Mapping[str, object], targets=None, step: int = DEFAULT_STEP,
                  names: Sequence[str] | None = None) -> Evaluation:
    """All four metrics of each method's maps [N,H,W] for preprocessed images [N,3,H,W] (targets as the metrics take)."""
    classes = _resolved_classes(explainer, images, targets)
    scores = {}
    for method, method_maps in maps.items():
        on_image, on_masked = confidence_pair(explainer, images, method_maps, classes)
        deletion = deletion_curve(explainer, images, method_maps, classes, step)
        insertion = insertion_curve(explainer, images, method_maps, classes, step)
        scores[method] = MethodScores(
            per_image={"average_drop": drops(on_image, on_masked), "increase_in_confidence": increases(on_image, on_masked),
                       "deletion_auc": trapezoid_auc(*deletion), "insertion_auc": trapezoid_auc(*insertion)},
            deletion=deletion, insertion=insertion,
        )
    names = list(names) if names is not None else [f"image {i}" for i in range(len(classes))]
    return Evaluation(scores, names, classes, int(step))


def _resolved_classes(explainer, images, targets) -> np.ndarray:
    """int64 [N] host classes: the targets, with each image's arg-max class where none is given."""
    manifest = explainer.bundle.manifest
    with explainer.scorer.in_use("resolve the target classes") as scorer:
        images = scorer.asarray(check_images(images, manifest.input_size))
        wanted = resolve_targets(targets, int(images.shape[0]), manifest.num_classes, manifest.class_names)
        return scorer.to_host(target_classes(scorer, images, wanted)).astype(np.int64)


def explain_and_evaluate(explainer, images, methods: Sequence[str], names: Sequence[str] | None = None,
                         step: int = DEFAULT_STEP) -> Evaluation:
    """Explain the images with the methods (each image's top class) and evaluate each method's maps for that class."""
    methods = checked_methods(methods)
    height, width = explainer.bundle.manifest.input_size
    checked_step(step, height * width)  # fail before the explaining, not after it
    explanation = explainer.explain(images, methods=methods, names=names)
    return evaluate_maps(explainer, images, {m: explanation.maps[m] for m in methods}, explanation.classes, step, names)


def checked_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The method names in the order given, without repeats, or an InputError naming the valid ones."""
    check_methods(methods)
    return tuple(dict.fromkeys(methods))
