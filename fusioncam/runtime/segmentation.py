"""Explaining a class over a region of a segmentation model's output: the seven methods on the shared engine.

Every masked forward of a segmentation bundle is scored by the region probability P (docs/segmentation.md), which
depends on the image's class and region, not only on a class. The shared method code asks the scorer for "the
score of each row at its target"; here an image's target is its (class, region weights) pair, identified by the
image's index: `SegmentationEngine.classes` holds image indices, which the methods pass through unchanged, and
`SegmentationScorer` looks each one's class and region weights up. Nothing of the methods' code is duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
import numpy as np

from ..errors import InputError
from ..graph_names import ACTIVATIONS, GRADIENTS, LOGITS, REGION_WEIGHTS, TARGET_USED
from .explanation import Explanation
from .methods import Engine, MethodOutput, run_methods
from .scorer import ProgressCallback, RowWriter, Scorer
from .segmentation_regions import resolve_regions
from .stage_clock import StageClock


class SegmentationScorer(Scorer):
    """The scorer service of a segmentation bundle: every row is scored by P for its image's class and region.

    `bind(classes, weights)` sets, for one explain call, each image's class [N] and region weights [N, H', W'];
    the row "classes" the shared code passes are image indices into them."""

    def bind(self, classes, weights) -> None:
        """The targets of the images of one call (device arrays); rows refer to them by image index."""
        self._classes = classes
        self._weights = weights

    def region_probabilities(self, total: int, images_of_row, write_rows: RowWriter, clock: StageClock | None = None,
                             on_batch: ProgressCallback | None = None):
        """float32 [total] on the device: P of each row, for the class and region of image images_of_row[row].

        The shared run loop does the batching: after writing a run's rows, their classes and region weights are
        handed to the backend, whose score_rows then returns P for them."""
        out = self.xp.empty((total,), dtype=self.xp.float32)

        def write(start: int, stop: int, buffer) -> None:
            write_rows(start, stop, buffer)
            rows = images_of_row[start:stop]
            self.backend.set_row_targets(self._classes[rows], self._weights[rows])

        def read(start: int, stop: int, scores) -> None:
            out[start:stop] = scores

        self.run(total, write, read, clock, on_batch)
        return out

    def target_logits(self, total: int, classes_of_row, write_rows: RowWriter, clock: StageClock | None = None,
                      on_batch: ProgressCallback | None = None):
        """The Score-CAM sweep's scores: P (docs/segmentation.md), float32 [total]."""
        return self.region_probabilities(total, classes_of_row, write_rows, clock, on_batch)

    def class_probabilities(self, total: int, classes_of_row, write_rows: RowWriter, clock: StageClock | None = None):
        """The probes' scores (betas, Group-CAM): P, float64 [total]."""
        return self.region_probabilities(total, classes_of_row, write_rows, clock).astype(self.xp.float64)

    def zero_image_probabilities(self, n: int, clock: StageClock | None = None):
        """P(z0) of each of the n bound images, float32 [n] on the device (z0: the all-zeros input)."""

        def write(start: int, stop: int, buffer) -> None:
            buffer[: stop - start] = 0

        return self.region_probabilities(n, self.xp.arange(n, dtype=self.xp.int64), write, clock)


class SegmentationEngine(Engine):
    """The shared engine with image indices as the scorer's row targets; P(z0) per image is the baseline."""

    def __init__(self, scorer: SegmentationScorer, images, graph: dict, z0_probabilities, *args, **kwargs) -> None:
        image_targets = dict(graph, **{TARGET_USED: scorer.xp.arange(int(images.shape[0]), dtype=scorer.xp.int64)})
        super().__init__(scorer, images, image_targets, z0_probabilities, *args, **kwargs)
        self.target_classes = graph[TARGET_USED]  # the explained class of each image
        self.region_weights = graph[REGION_WEIGHTS]
        self.class_scores = graph[LOGITS]  # [N, C, H', W']
        # What the classifier Explanation reads as logits [N, targets]: here the targets are the N images, and the
        # per-class probabilities it derives do not apply (the segmentation explanation replaces them with P(x)).
        n = int(images.shape[0])
        self.logits = self.xp.zeros((n, n), dtype=self.xp.float32)

    @cached_property
    def b0(self):
        """P(z0) per image, float64 [N] (the all-zeros input scored for each image's class and region)."""
        return self.xp.asarray(self.z0_logits, dtype=self.xp.float64)


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


def _check_regions_nonempty(weights: np.ndarray, classes: np.ndarray, names: list[str], class_name) -> None:
    """An empty region has no score to explain: InputError naming the images, their classes and the fix."""
    empty = np.flatnonzero(weights.reshape(len(weights), -1).sum(axis=1) <= 0)
    if len(empty):
        which = ", ".join(f"{names[i]} ({class_name(int(classes[i]))})" for i in empty)
        raise InputError(f"the explained region is empty for: {which}. With the default regions='predicted' this "
                         f"means the model predicts that class on no pixel of the image; explain another class, or "
                         f"give regions='all' or a box (x0, y0, x1, y1)")


def explain_segmentation(explainer, images, targets, regions, methods: tuple[str, ...], names: list[str],
                         on_batch=None) -> SegmentationExplanation:
    """The chosen methods' maps for a class over a region per image (Explainer.explain on a segmentation bundle).

    `images` are checked float32 [N,3,H,W]; `targets` resolved int64 [N] (-1: the class predicted on most pixels)."""
    manifest = explainer.bundle.manifest
    region_array = resolve_regions(regions, int(images.shape[0]), tuple(manifest.input_size))
    scorer: SegmentationScorer = explainer.scorer
    with explainer._in_use():
        backend, kernels = explainer.backend, explainer.backend.kernels
        clock = backend.clock()
        clock.start("explain_pass")
        bad = kernels.nonfinite_rows(images)
        graph = backend.explain(backend.asarray(images), backend.asarray(targets), region_array)
        bad = bad | kernels.nonfinite_rows(graph[LOGITS], graph[ACTIVATIONS], graph[GRADIENTS])
        clock.stop("explain_pass")
        explainer._raise_if_nonfinite(backend.to_host(bad), names)
        _check_regions_nonempty(backend.to_host(graph[REGION_WEIGHTS]), backend.to_host(graph[TARGET_USED]), names,
                                explainer.bundle.class_name)
        scorer.bind(graph[TARGET_USED], graph[REGION_WEIGHTS])
        clock.start("baseline_forwards")
        z0 = scorer.zero_image_probabilities(int(images.shape[0]))
        clock.stop("baseline_forwards")
        engine = SegmentationEngine(scorer, images, graph, z0, explainer.theta, explainer.skip_constant_channels,
                                    clock, on_batch, explainer.max_channels)
        outputs = run_methods(engine, methods)
        for name, out in outputs.items():
            explainer._raise_if_nonfinite(backend.to_host(kernels.nonfinite_rows(out.map)), names,
                                          f"the {name} map of")
        return _segmentation_explanation(explainer, engine, outputs)


def _segmentation_explanation(explainer, engine: SegmentationEngine,
                              outputs: dict[str, MethodOutput]) -> SegmentationExplanation:
    """The classifier Explanation's fields, with the explained classes, P(x) and the region weights."""
    base = explainer._explanation(engine, outputs)
    to_host = engine.scorer.to_host
    classes = to_host(engine.target_classes).astype(np.int64)
    weights = to_host(engine.region_weights).astype(np.float32)
    logits = to_host(engine.class_scores).astype(np.float32)
    fields = {name: getattr(base, name) for name in base.__dataclass_fields__}
    fields.update(classes=classes, logits=logits, region_weights=weights,
                  probabilities=region_probability_of_logits(logits, classes, weights))
    return SegmentationExplanation(**fields)


__all__ = ["SegmentationEngine", "SegmentationExplanation", "SegmentationScorer", "explain_segmentation",
           "region_probability_of_logits"]
