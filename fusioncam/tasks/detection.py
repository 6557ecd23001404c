"""The detection task: one explained instance per row (fusioncam/export/detection_graph.py builds its graphs).

An **instance** is one detection of one image: the image index, its anchor (the index of the prediction in the
model's raw output, before NMS), its class, its reference box (x0, y0, x1, y1 in input pixels) and its score (the
class score after the model's activation at that anchor; objectness x class probability for YOLOv5-style heads).

How instances are chosen (`Explainer.explain(images, instances=...)`):

- None or an `InstanceSelection(min_score, max_instances, iou_threshold)`: every detection the model keeps: anchors
  whose best class score is >= min_score, class-wise NMS on the host at iou_threshold, the max_instances highest per
  image. iou_threshold None (the default) is the model's own NMS threshold, recorded in the bundle's manifest at
  export (`nms_iou_threshold`: torchvision's `nms_thresh`, Faster R-CNN's `roi_heads.nms_thresh`), else
  Ultralytics' default 0.7 (ONNX files made elsewhere, query detectors). An image with no detection above min_score gives no rows; a call where no
  image has one returns an empty result (maps of shape [0, H, W]), not an error;
- a list with one entry per image, each a list of instances named by the user: an int (an anchor index; the
  reference box is that anchor's box) or a (class, box) pair (class index or name; box x0, y0, x1, y1 inside the
  image; matched to the anchor maximising IoU(box_a, box) x score[a, class]; the reference box is the given box).

Graph inputs: the explain graph takes per row the image, ANCHOR, TARGET (class), REFERENCE_BOX and INSTANCE_IMAGE and
differentiates that instance's own score (not a sum over boxes); the scorer takes per row a masked image, its
TARGET and REFERENCE_BOX and returns max over anchors of IoU(box_a, reference) x score[a, class] (D-RISE's
similarity of the best-matching prediction), which is both the raw score (Score-CAM) and the probability (betas).

The task explains several rows per image: `explained_rows` (an optional member of the Task protocol, see
tasks/__init__.py) turns N images into one row per instance before the explain pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..graph_names import (ACTIVATIONS, ANCHOR, ANCHOR_USED, DETECTION_BOXES, DETECTION_EXPLAIN_OUTPUTS,
                           DETECTION_SCORES, GRADIENTS, INSTANCE_BOX, INSTANCE_IMAGE, INSTANCE_IMAGE_USED, LOGITS,
                           REFERENCE_BOX, REFERENCE_BOX_USED, SCORE, TARGET, TARGET_USED)
from ..runtime.explanation import Explanation
from . import Baseline, Prediction, TensorSpec


@dataclass(frozen=True)
class InstanceSelection:
    """Which detections explain() picks by default: best class score >= min_score, class-wise NMS at iou_threshold
    on the host, at most max_instances per image (highest scores first). iou_threshold None: the bundle's own
    (`model_iou_threshold`)."""

    min_score: float = 0.25
    max_instances: int = 10
    iou_threshold: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.min_score) <= 1.0:
            raise InputError(f"min_score must be in [0, 1]; got {self.min_score}")
        count = self.max_instances
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise InputError(f"max_instances must be a positive number of instances per image; got {count!r}")
        if self.iou_threshold is not None and not 0.0 < float(self.iou_threshold) <= 1.0:
            raise InputError(f"iou_threshold must be in (0, 1] or None (the model's own); got {self.iou_threshold}")


DEFAULT_IOU_THRESHOLD = 0.7  # Ultralytics' NMS default, for bundles that record no threshold of their own


def model_iou_threshold(manifest) -> float:
    """The NMS IoU threshold the bundle's model uses (recorded at export), else DEFAULT_IOU_THRESHOLD."""
    recorded = manifest.nms_iou_threshold
    return DEFAULT_IOU_THRESHOLD if recorded is None else float(recorded)


@dataclass(frozen=True)
class InstanceTargets:
    """Rows' targets: each row's class and reference box ([rows], [rows, 4] on the device); slicing slices rows."""

    classes: Any
    boxes: Any

    def __getitem__(self, key) -> "InstanceTargets":
        return InstanceTargets(self.classes[key], self.boxes[key])

    def __len__(self) -> int:
        return int(self.classes.shape[0])


@dataclass(kw_only=True)
class DetectionExplanation(Explanation):
    """An Explanation with one row per explained instance: maps [I, H, W]; `classes` [I] and `probabilities` [I]
    (the instance's score); `image_index` [I] (which input image), `anchors` [I], `boxes` [I, 4] (the anchor's box
    on the image, x0, y0, x1, y1), `reference_boxes` [I, 4] (what masked images are matched against); `logits` [I, C]
    the instance's class scores."""

    image_index: np.ndarray
    anchors: np.ndarray
    boxes: np.ndarray
    reference_boxes: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        """float64 [I]: each instance's class score (the explained score)."""
        return self.probabilities


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of boxes [A, 4] with one box [4] (x0, y0, x1, y1), float64; empty boxes have IoU 0."""
    boxes, box = np.asarray(boxes, np.float64), np.asarray(box, np.float64)
    low = np.maximum(boxes[:, :2], box[:2])
    high = np.minimum(boxes[:, 2:], box[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    union = area + np.prod(np.clip(box[2:] - box[:2], 0, None)) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms_instances(boxes: np.ndarray, scores: np.ndarray, selection: InstanceSelection,
                  model_threshold: float = DEFAULT_IOU_THRESHOLD) -> list[tuple[int, int]]:
    """(anchor, class) of the detections one image keeps: best class per anchor >= min_score, greedy class-wise NMS
    at selection.iou_threshold (None: model_threshold), highest first, at most max_instances."""
    threshold = model_threshold if selection.iou_threshold is None else float(selection.iou_threshold)
    classes = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), classes]
    order = [int(a) for a in np.argsort(-best, kind="stable") if best[a] >= selection.min_score]
    kept: list[int] = []
    for anchor in order:
        same = [k for k in kept if classes[k] == classes[anchor]]
        if same and box_iou(boxes[same], boxes[anchor]).max() > threshold:
            continue
        kept.append(anchor)
        if len(kept) == selection.max_instances:
            break
    return [(anchor, int(classes[anchor])) for anchor in kept]


def _class_index(value, num_classes: int, class_names: Sequence[str] | None, where: str) -> int:
    if isinstance(value, str):
        if class_names is None or value not in class_names:
            raise InputError(f"{where}: unknown class {value!r}; the bundle's classes are "
                             f"{', '.join(class_names) if class_names else f'0..{num_classes - 1} (no names)'}")
        return class_names.index(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < num_classes:
        raise InputError(f"{where}: class {value!r} is not one the model has (0..{num_classes - 1})")
    return int(value)


def _named_instance(item, boxes: np.ndarray, scores: np.ndarray, size: tuple[int, int],
                    class_names: Sequence[str] | None, where: str) -> tuple[int, int, np.ndarray]:
    """(anchor, class, reference box) of one instance the user named: an anchor index, or (class, box)."""
    anchors, classes = scores.shape
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        if not 0 <= int(item) < anchors:
            raise InputError(f"{where}: anchor {item} is out of range; the model has {anchors} anchors "
                             f"(0..{anchors - 1})")
        anchor = int(item)
        return anchor, int(scores[anchor].argmax()), boxes[anchor]
    if isinstance(item, (tuple, list)) and len(item) == 2:
        cls = _class_index(item[0], classes, class_names, where)
        box = np.asarray(item[1], dtype=np.float64)
        height, width = size
        if box.shape != (4,) or not np.isfinite(box).all():
            raise InputError(f"{where}: a box is 4 numbers x0, y0, x1, y1; got {item[1]!r}")
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height or box[2] <= box[0] or box[3] <= box[1]:
            raise InputError(f"{where}: box {tuple(box.tolist())} is not inside the {width}x{height} input image "
                             f"with x0 < x1 and y0 < y1 (input pixels, after resizing)")
        anchor = int(np.argmax(box_iou(boxes, box) * scores[:, cls]))
        return anchor, cls, box.astype(np.float32)
    raise InputError(f"{where}: an instance is an anchor index (int) or a (class, box) pair; got {item!r}")


class DetectionTask:
    """One instance (anchor, class, reference box) per row (the Task protocol, tasks/__init__.py)."""

    name = "detection"
    explain_inputs = (ANCHOR, TARGET, REFERENCE_BOX, INSTANCE_IMAGE)
    explain_outputs = DETECTION_EXPLAIN_OUTPUTS
    row_inputs = (TARGET, REFERENCE_BOX)
    scorer_output = SCORE
    # an instance reads its own feature-pyramid level (and those it is computed from), not the others: a
    # several-layer bundle's maps are combined by each level's attribution (runtime/layer_aggregation.py)
    layers_weighted_by_attribution = True
    compat_note = ("whose Score-CAM scores D-RISE's IoU x class score of the best-matching prediction; "
                   "pytorch-grad-cam's FasterRCNNBoxScoreTarget is reproduced on a torchvision Faster R-CNN module by "
                   "fusioncam.pytorch_grad_cam's classes (e.g. GradCAM(model=..., target_layers=[...]) called with "
                   "targets=[FasterRCNNBoxScoreTarget(labels, bounding_boxes)]), not on bundles")

    def explain_feed(self, manifest, n: int, targets, regions, class_names) -> dict[str, np.ndarray]:
        """Placeholder rows (anchor 0, class 0, the whole image) for N images; explained_rows replaces them with
        the instances. targets= and regions= are refused: instances= names what to explain."""
        if targets is not None or regions is not None:
            raise InputError("a detection bundle explains instances: give instances= (anchor indices or (class, box) "
                             "pairs per image, or an InstanceSelection); targets= and regions= do not apply")
        height, width = manifest.input_size
        return {ANCHOR: np.zeros(n, np.int64), TARGET: np.zeros(n, np.int64),
                REFERENCE_BOX: np.tile(np.array([0, 0, width, height], np.float32), (n, 1)),
                INSTANCE_IMAGE: np.arange(n, dtype=np.int64)}

    def explained_rows(self, scorer, images, feed: dict, instances, names: list[str], manifest,
                       class_names) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
        """(image of each row, the rows' explain feed, the rows' names): the model's detections of the images
        (one explain pass with the placeholder feed) give the default instances, or match the named ones."""
        graph = scorer.backend.explain(images, {k: scorer.backend.asarray(v) for k, v in feed.items()})
        boxes = np.asarray(scorer.to_host(graph[DETECTION_BOXES]), np.float32)
        scores = np.asarray(scorer.to_host(graph[DETECTION_SCORES]), np.float32)
        n = len(boxes)
        size = tuple(manifest.input_size)
        rows: list[tuple[int, int, int, np.ndarray]] = []
        if instances is None or isinstance(instances, InstanceSelection):
            selection = instances or InstanceSelection()
            for i in range(n):
                rows += [(i, a, c, boxes[i, a])
                         for a, c in nms_instances(boxes[i], scores[i], selection, model_iou_threshold(manifest))]
        else:
            if not isinstance(instances, (list, tuple)) or len(instances) != n:
                raise InputError(f"instances= must be None, an InstanceSelection, or a list of {n} lists (one per "
                                 f"image) of anchor indices or (class, box) pairs; got {instances!r}")
            for i, items in enumerate(instances):
                if not isinstance(items, (list, tuple)):
                    raise InputError(f"instances[{i}] ({names[i]}) must be a list of instances; got {items!r}")
                for j, item in enumerate(items):
                    anchor, cls, box = _named_instance(item, boxes[i], scores[i], size, class_names,
                                                       f"instances[{i}][{j}] ({names[i]})")
                    rows.append((i, anchor, cls, box))
        index = np.array([r[0] for r in rows], np.int64)
        row_feed = {ANCHOR: np.array([r[1] for r in rows], np.int64), TARGET: np.array([r[2] for r in rows], np.int64),
                    REFERENCE_BOX: np.array([r[3] for r in rows], np.float32).reshape(-1, 4),
                    INSTANCE_IMAGE: index}
        counts: dict[int, int] = {}
        row_names = []
        for i, anchor, cls, _ in rows:
            counts[i] = counts.get(i, 0) + 1
            row_names.append(f"{names[i]} instance {counts[i] - 1} (anchor {anchor}, class {cls})")
        return index, row_feed, row_names

    def explain_output_specs(self, manifest) -> dict[str, TensorSpec]:
        anchors, classes = manifest.output_size
        features = (manifest.channels, *manifest.feature_size)
        return {LOGITS: TensorSpec((classes,), "float"), ACTIVATIONS: TensorSpec(features, "float"),
                GRADIENTS: TensorSpec(features, "float"), TARGET_USED: TensorSpec((), "int64"),
                ANCHOR_USED: TensorSpec((), "int64"), INSTANCE_BOX: TensorSpec((4,), "float"),
                REFERENCE_BOX_USED: TensorSpec((4,), "float"), INSTANCE_IMAGE_USED: TensorSpec((), "int64"),
                DETECTION_BOXES: TensorSpec((anchors, 4), "float"),
                DETECTION_SCORES: TensorSpec((anchors, classes), "float")}

    def row_input_specs(self, manifest) -> dict[str, TensorSpec]:
        return {TARGET: TensorSpec((), "int64"), REFERENCE_BOX: TensorSpec((4,), "float")}

    def scorer_output_shape(self, manifest) -> tuple[int, ...]:
        return ()

    def image_targets(self, graph: Mapping[str, Any]) -> InstanceTargets:
        """Each row's class and reference box."""
        return InstanceTargets(graph[TARGET_USED], graph[REFERENCE_BOX_USED])

    def check_explained(self, graph_on_host, names, class_name) -> None:
        """Every instance can be explained."""

    def row_feed(self, rows: InstanceTargets) -> dict[str, Any]:
        return {TARGET: rows.classes, REFERENCE_BOX: rows.boxes}

    def row_scores(self, xp, outputs, rows):
        """The scorer's similarity per row."""
        return outputs

    def row_probabilities(self, xp, outputs, rows):
        return outputs.astype(xp.float64)

    def constant_baseline(self, scorer) -> None:
        """Nothing: z0's similarity depends on each row's class and reference box."""
        return None

    def baseline(self, scorer, targets: InstanceTargets, constant, clock) -> Baseline:
        """z0's similarity for each row's class and reference box: one scorer row of zeros each."""
        xp = scorer.xp
        clock.start("baseline_forwards")
        scores = scorer.target_logits(len(targets), targets, _zero_rows)
        clock.stop("baseline_forwards")
        return Baseline(scores=scores, probabilities=xp.asarray(scores, dtype=xp.float64))

    def explanation(self, fields: dict[str, Any], graph: Mapping[str, Any] | None, xp, to_host) -> DetectionExplanation:
        """One row per instance; with graph None (no instance) every array has 0 rows."""
        if graph is None:
            classes = fields.pop("num_classes", 0)
            return DetectionExplanation(classes=np.zeros(0, np.int64), probabilities=np.zeros(0), logits=
                                        np.zeros((0, classes), np.float32), image_index=np.zeros(0, np.int64),
                                        anchors=np.zeros(0, np.int64), boxes=np.zeros((0, 4), np.float32),
                                        reference_boxes=np.zeros((0, 4), np.float32), **fields)
        classes = to_host(graph[TARGET_USED]).astype(np.int64)
        logits = to_host(graph[LOGITS]).astype(np.float32)
        return DetectionExplanation(
            classes=classes, logits=logits, probabilities=logits[np.arange(len(classes)), classes].astype(np.float64),
            image_index=to_host(graph[INSTANCE_IMAGE_USED]).astype(np.int64),
            anchors=to_host(graph[ANCHOR_USED]).astype(np.int64),
            boxes=to_host(graph[INSTANCE_BOX]).astype(np.float32),
            reference_boxes=to_host(graph[REFERENCE_BOX_USED]).astype(np.float32), **fields)

    def image_facts(self, explanation, index: int) -> dict[str, Any]:
        """Facts of instance row `index`."""
        return {"image": int(explanation.image_index[index]), "anchor": int(explanation.anchors[index]),
                "class": int(explanation.classes[index]), "class_name": explanation.class_name(index),
                "score": float(explanation.probabilities[index]),
                "probability": float(explanation.probabilities[index]),
                "box": [float(v) for v in explanation.boxes[index]]}

    def predict(self, scorer, images) -> Prediction:
        """Every anchor's class scores [N, A, C] (logits and probabilities: they are activated already) and each
        anchor's best class [N, A]; the boxes are in `detections(...)`."""
        backend = scorer.backend
        n = int(images.shape[0])
        height, width = images.shape[2:]
        feed = {ANCHOR: np.zeros(n, np.int64), TARGET: np.zeros(n, np.int64),
                REFERENCE_BOX: np.tile(np.array([0, 0, width, height], np.float32), (n, 1)),
                INSTANCE_IMAGE: np.arange(n, dtype=np.int64)}
        graph = backend.explain(images, {name: backend.asarray(value) for name, value in feed.items()})
        scores = np.asarray(backend.to_host(graph[DETECTION_SCORES]), dtype=np.float32)
        return Prediction(logits=scores, probabilities=scores.astype(np.float64),
                          classes=scores.argmax(axis=2).astype(np.int64))


def _zero_rows(start: int, stop: int, buffer) -> None:
    buffer[: stop - start] = 0


DETECTION = DetectionTask()

__all__ = ["DEFAULT_IOU_THRESHOLD", "DETECTION", "DetectionExplanation", "DetectionTask", "InstanceSelection",
           "InstanceTargets", "box_iou", "model_iou_threshold", "nms_instances"]
