"""Every metric for several methods' maps of the same images: per-image values and the curves, for the report."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..runtime.explanation import Explanation
from ..runtime.methods import check_methods
from .confidence import drops, increases, masked_probabilities
from .inputs import checked_images, checked_step, checked_targets, device_maps
from .perturbation_batches import image_predictions
from .perturbation_curves import DEFAULT_STEP, curve_probabilities, insertion_baselines, step_counts, trapezoid_auc
from .road import ROAD_NOISE, checked_classification, checked_percentiles, road_probabilities, scores_from_probabilities

METRICS = ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")
ROAD_METRICS = ("road_morf", "road_lerf", "road_combined")  # with road_percentiles (metrics/road.py)

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
    road_percentiles: tuple[int, ...] | None = None  # ROAD's, where ROAD_METRICS were measured


def measured_metrics(evaluation: Evaluation) -> tuple[str, ...]:
    """The per-image metrics an evaluation holds: METRICS, then ROAD_METRICS where ROAD was measured."""
    return METRICS + ROAD_METRICS if evaluation.road_percentiles is not None else METRICS


def evaluate_maps(explainer, images, maps: Mapping[str, object], targets=None, step: int = DEFAULT_STEP,
                  names: Sequence[str] | None = None, *, explanation: Explanation | None = None,
                  before_method: Callable[[], None] | None = None,
                  road_percentiles: Sequence[int] | None = None) -> Evaluation:
    """All four metrics of each method's maps [N,H,W] for preprocessed images [N,3,H,W] (targets as the metrics take).

    The work every method shares is done once: the images are checked, classified (where a target is -1) and
    scored unperturbed (Y) once, and blurred for insertion once. `explanation`, this explainer's Explanation of
    these same images, also saves Y's forwards: its class probabilities come from the explain pass, the same
    float32 forward as the scorer's, though not always bit for bit: equal on the tests' small models, about 1e-7
    relative apart on EfficientNet-Lite0 on the CPU (Average Drop moves in its 8th digit), and on a GPU the two
    graphs may pick other convolution algorithms. With the float16 scorer Y is scored again, so that Y and O come
    from one graph. Without targets, the explanation's classes are the targets. `before_method` is called before
    each method's perturbations (the CLI checks for a stop signal there). `road_percentiles` (None: off) adds
    ROAD's "road_morf", "road_lerf" and "road_combined" per image (metrics/road.py: noise 0.01, seed 0), the same Y.
    """
    if targets is None and explanation is not None:
        targets = explanation.classes
    manifest = explainer.bundle.manifest
    plane = manifest.input_size[0] * manifest.input_size[1]
    if road_percentiles is not None:
        checked_classification(explainer)
        road_percentiles = checked_percentiles(road_percentiles)
    with explainer.scorer.in_use("evaluate maps") as scorer:
        images = checked_images(scorer, images, manifest.input_size)
        n = int(images.shape[0])
        wanted = checked_targets(explainer, targets, n)
        counts = step_counts(plane, checked_step(step, plane))
        reused = _reusable_probabilities(explainer, explanation, wanted)
        if reused is not None:
            classes, on_image = scorer.asarray(wanted), reused
        else:
            classes, on_image = image_predictions(scorer, images, wanted)
            on_image = scorer.to_host(on_image)
        baselines = insertion_baselines(scorer, images)
        x = counts / plane
        scores = {}
        for method, method_maps in maps.items():
            if before_method is not None:
                before_method()
            method_maps = device_maps(scorer, method_maps, (n, *manifest.input_size))
            on_masked = scorer.to_host(masked_probabilities(scorer, images, method_maps, classes))
            deletion = (x, curve_probabilities(scorer, images, method_maps, classes, counts))
            insertion = (x, curve_probabilities(scorer, images, method_maps, classes, counts, baselines))
            scores[method] = MethodScores(
                per_image={"average_drop": drops(on_image, on_masked),
                           "increase_in_confidence": increases(on_image, on_masked),
                           "deletion_auc": trapezoid_auc(*deletion), "insertion_auc": trapezoid_auc(*insertion)},
                deletion=deletion, insertion=insertion,
            )
            if road_percentiles is not None:
                after = road_probabilities(scorer, images, method_maps, classes, road_percentiles, ROAD_NOISE, 0)
                road = scores_from_probabilities(after, on_image, road_percentiles)
                scores[method].per_image.update(road_morf=road.morf, road_lerf=road.lerf, road_combined=road.combined)
        classes = scorer.to_host(classes).astype(np.int64)
    names = list(names) if names is not None else [f"image {i}" for i in range(n)]
    return Evaluation(scores, names, classes, int(step), road_percentiles)


def _reusable_probabilities(explainer, explanation: Explanation | None, wanted: np.ndarray) -> np.ndarray | None:
    """Y from the explanation (host float64 [N]) when it holds the scorer's own values for these classes, else None."""
    if explanation is None or explainer.precision == "fp16":
        return None
    if len(explanation) != len(wanted) or not np.array_equal(explanation.classes, wanted):
        return None
    return np.asarray(explanation.probabilities, dtype=np.float64)


def explain_and_evaluate(explainer, images, methods: Sequence[str], names: Sequence[str] | None = None,
                         step: int = DEFAULT_STEP, road_percentiles: Sequence[int] | None = None) -> Evaluation:
    """Explain the images with the methods (each image's top class) and evaluate each method's maps for that class."""
    methods = checked_methods(methods)
    height, width = explainer.bundle.manifest.input_size
    checked_step(step, height * width)  # fail before the explaining, not after it
    explanation = explainer.explain(images, methods=methods, names=names)
    return evaluate_maps(explainer, images, {m: explanation.maps[m] for m in methods}, explanation.classes, step, names,
                         explanation=explanation, road_percentiles=road_percentiles)


def checked_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The method names in the order given, without repeats, or an InputError naming the valid ones."""
    check_methods(methods)
    return tuple(dict.fromkeys(methods))
