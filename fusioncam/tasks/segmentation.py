"""The segmentation task: a class over a region of per-pixel class scores [N, C, H', W'] (docs/segmentation.md).

Explain graph: images, a class per image (TARGET, -1: the class predicted on most pixels) and a region mask at the
input resolution (REGION, a row of PREDICTED_REGION: where the model predicts the class); it returns the class
scores, the explained class and the region weights w [N, H', W'] it used. Scorer: each masked image with its
image's class and region weights (TARGET, REGION_WEIGHTS) per row; it returns the region probability
P = sum_ij w_ij softmax(y(i, j))_c / sum_ij w_ij [rows]. P is both the raw score and the probability. The
all-zeros image's P depends on each image's region, so the baseline is scored on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..graph_names import (ACTIVATIONS, GRADIENTS, LOGITS, PREDICTED_REGION, REGION, REGION_WEIGHTS, SCORE, TARGET,
                           TARGET_USED, SEGMENTATION_EXPLAIN_OUTPUTS)
from ..runtime.explanation import Explanation
from ..runtime.input_checks import resolve_targets
from . import Baseline, Prediction, TensorSpec
from .classification import softmax
from .segmentation_regions import resolve_regions


@dataclass(frozen=True)
class RegionTargets:
    """Rows' targets: image `index[row]`'s class and region weights. Indexing by image indices or slicing rows
    composes the index; the classes and weights [N, H', W'] are gathered only for the rows a scorer run feeds."""

    classes: Any  # int64 [N] on the device
    weights: Any  # float32 [N, H', W'] on the device
    index: Any  # int64 [rows] on the device: the image of each row

    def __getitem__(self, key) -> "RegionTargets":
        return RegionTargets(self.classes, self.weights, self.index[key])

    def __len__(self) -> int:
        return int(self.index.shape[0])


@dataclass(kw_only=True)
class SegmentationExplanation(Explanation):
    """An Explanation of a segmentation bundle: `classes` are the explained classes, `probabilities` the region
    probability P(x), `logits` the class scores [N, C, H', W'], and `region_weights` [N, H', W'] the explained
    region (the w of S and P) at the output's resolution."""

    region_weights: np.ndarray | None = None

    @property
    def predicted(self) -> np.ndarray:
        """int64 [N, H', W']: the predicted class of every output pixel."""
        return np.argmax(self.logits, axis=1)


def region_probability_of_logits(logits: np.ndarray, classes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """P(x) from the explain pass's class scores (host float64 [N]), as the scorer computes it for masked inputs."""
    logits = logits.astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp[np.arange(len(classes)), classes] / exp.sum(axis=1)
    weights = weights.astype(np.float64)
    return (probs * weights).sum(axis=(1, 2)) / np.maximum(weights.sum(axis=(1, 2)), 1e-12)


def check_regions_nonempty(weights: np.ndarray, classes: np.ndarray, names: Sequence[str], class_name) -> None:
    """An empty region has no score to explain: InputError naming the images, their classes and the fix."""
    empty = np.flatnonzero(weights.reshape(len(weights), -1).sum(axis=1) <= 0)
    if len(empty):
        which = ", ".join(f"{names[i]} ({class_name(int(classes[i]))})" for i in empty)
        raise InputError(f"the explained region is empty for: {which}. With the default regions='predicted' this "
                         f"means the model predicts that class on no pixel of the image; explain another class, or "
                         f"give regions='all' or a box (x0, y0, x1, y1)")


class SegmentationTask:
    """A class over a region per image (the Task protocol, tasks/__init__.py)."""

    name = "segmentation"
    explain_inputs = (TARGET, REGION)
    explain_outputs = SEGMENTATION_EXPLAIN_OUTPUTS
    row_inputs = (TARGET, REGION_WEIGHTS)
    scorer_output = SCORE
    compat_note = ("whose Score-CAM scores the region probability P (docs/segmentation.md) where pytorch-grad-cam "
                   "sums class scores")

    def explain_feed(self, manifest, n: int, targets, regions, class_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        """TARGET int64 [N] (-1: the class predicted on most pixels) and REGION float32 [N, H, W] (see
        tasks/segmentation_regions.py for the forms regions= takes)."""
        target_array = resolve_targets(targets, n, manifest.num_classes, class_names)
        return {TARGET: target_array, REGION: resolve_regions(regions, n, tuple(manifest.input_size))}

    def explain_output_specs(self, manifest) -> dict[str, TensorSpec]:
        features = (manifest.channels, *manifest.feature_size)
        output = tuple(manifest.output_size)
        return {LOGITS: TensorSpec((manifest.num_classes, *output), "float"),
                ACTIVATIONS: TensorSpec(features, "float"), GRADIENTS: TensorSpec(features, "float"),
                TARGET_USED: TensorSpec((), "int64"), REGION_WEIGHTS: TensorSpec(output, "float")}

    def row_input_specs(self, manifest) -> dict[str, TensorSpec]:
        return {TARGET: TensorSpec((), "int64"), REGION_WEIGHTS: TensorSpec(tuple(manifest.output_size), "float")}

    def scorer_output_shape(self, manifest) -> tuple[int, ...]:
        return ()

    def image_targets(self, graph: Mapping[str, Any]) -> RegionTargets:
        """Each image's explained class and region weights; row i of the result is image i."""
        classes = graph[TARGET_USED]
        xp = _array_module(classes)
        return RegionTargets(classes, graph[REGION_WEIGHTS], xp.arange(int(classes.shape[0]), dtype=xp.int64))

    def check_explained(self, graph_on_host, names, class_name) -> None:
        """An empty region (the class predicted on no pixel, by default) is refused, naming the images."""
        check_regions_nonempty(graph_on_host(REGION_WEIGHTS), graph_on_host(TARGET_USED), names, class_name)

    def row_feed(self, rows: RegionTargets) -> dict[str, Any]:
        """The rows' classes and region weights."""
        return {TARGET: rows.classes[rows.index], REGION_WEIGHTS: rows.weights[rows.index]}

    def row_scores(self, xp, outputs, rows):
        """P per row: the scorer's output itself."""
        return outputs

    def row_probabilities(self, xp, outputs, rows):
        """P per row, float64."""
        return outputs.astype(xp.float64)

    def constant_baseline(self, scorer) -> None:
        """Nothing: P(z0) depends on each call's regions."""
        return None

    def baseline(self, scorer, targets: RegionTargets, constant, clock) -> Baseline:
        """P(z0) of each image for its class and region: N scorer rows of zeros."""
        xp = scorer.xp
        n = len(targets)
        clock.start("baseline_forwards")
        scores = scorer.target_logits(n, targets, _zero_rows)
        clock.stop("baseline_forwards")
        return Baseline(scores=scores, probabilities=xp.asarray(scores, dtype=xp.float64))

    def explanation(self, fields: dict[str, Any], graph: Mapping[str, Any], xp, to_host) -> SegmentationExplanation:
        """classes: the explained classes; probabilities: P(x); logits: the class scores; region_weights: w."""
        classes = to_host(graph[TARGET_USED]).astype(np.int64)
        weights = to_host(graph[REGION_WEIGHTS]).astype(np.float32)
        logits = to_host(graph[LOGITS]).astype(np.float32)
        return SegmentationExplanation(classes=classes, logits=logits, region_weights=weights,
                                       probabilities=region_probability_of_logits(logits, classes, weights), **fields)

    def image_facts(self, explanation, index: int) -> dict[str, Any]:
        return {"class": int(explanation.classes[index]), "class_name": explanation.class_name(index),
                "probability": float(explanation.probabilities[index]),
                "region_area": float(explanation.region_weights[index].sum())}

    def predict(self, scorer, images) -> Prediction:
        """The per-pixel class scores of the explain pass (the only graph that returns them), for the class
        predicted on most pixels over its predicted region; their softmax over classes and arg-max per pixel."""
        backend = scorer.backend
        n = int(images.shape[0])
        feed = {TARGET: np.full(n, -1, dtype=np.int64),
                REGION: np.full((n, *images.shape[2:]), PREDICTED_REGION, dtype=np.float32)}
        graph = backend.explain(images, {name: backend.asarray(value) for name, value in feed.items()})
        logits = np.asarray(backend.to_host(graph[LOGITS]), dtype=np.float32)
        return Prediction(logits=logits, probabilities=softmax(logits), classes=logits.argmax(axis=1).astype(np.int64))


def _zero_rows(start: int, stop: int, buffer) -> None:
    """Scorer rows of the all-zeros image."""
    buffer[: stop - start] = 0


def _array_module(array):
    from ..kernels.array_math import array_module

    return array_module(array)


SEGMENTATION = SegmentationTask()

__all__ = ["RegionTargets", "SEGMENTATION", "SegmentationExplanation", "SegmentationTask", "check_regions_nonempty",
           "region_probability_of_logits"]
