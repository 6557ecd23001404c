"""A detector's encodings for serve, evaluate and explain-dataset (fusioncam/tasks/detection.py explains one
instance per row). `fusioncam evaluate` and explain-dataset get one row per instance, scored by its matched score
(metrics/detection.py); explain-dataset's rows carry `instance`, `anchor` and `box` (dataset/rows.py).

What a request explains, per image: the detections the model keeps (best class score >= `min_score`, class-wise NMS,
at most `max_instances`, highest first; the request parameters, defaults 0.25 and 10), or the instances it names:
an anchor index, or a class (index or name) and a box x0, y0, x1, y1 in input pixels (matched to the anchor that
maximises IoU x class score).

- v1: parameters `min_score`, `max_instances`, and `instances` (a list with one list per image); an instance object
  may carry its own `"instances": [...]`. A named instance is `7`, `{"class": "car", "box": [x0, y0, x1, y1]}` or
  `["car", [x0, y0, x1, y1]]`. `:predict` answers per image `{"boxes", "classes", "class_names", "scores",
  "anchors"}`; `:explain` answers per image `{"instances": [{"box", "class", "class_name", "score", "anchor",
  "maps": {method: [H, W]}, "overlays": ...}, ...]}` (an image with no detection: an empty list) and its predictions
  are the explained instances.
- v2: parameters `min_score`, `max_instances`, and `instances` (the same list, as JSON text). Outputs `boxes` FP32
  [N, I, 4], `scores` FP32 [N, I], `classes` INT64 [N, I], `class_names` BYTES [N, I], `anchors` INT64 [N, I],
  `instance_count` INT64 [N], and one FP32 [N, I, H, W] map per method, where I is the largest instance count of
  the request's images. Rows j >= instance_count[n] of image n are padding: box 0, score 0, class -1, anchor -1,
  class name "", map 0.

In a server batch the images are explained in one Explainer call per kind of request (one per distinct
`min_score`/`max_instances`, one for the images with named instances), and each image gets back its own rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .detection import InstanceSelection, _named_instance, model_iou_threshold, nms_instances

INSTANCE_PARAMETERS = ("min_score", "max_instances", "instances")
NOT_HERE = ("a detection bundle explains instances: leave out '{name}' and give 'min_score', 'max_instances' or "
            "'instances' (per image a list of anchor indices or {{\"class\": ..., \"box\": [x0, y0, x1, y1]}})")
PAD_CLASS = -1


@dataclass(frozen=True)
class NamedInstances:
    """One image's instances as the request names them (Explainer.explain's per-image list)."""

    items: tuple


def _plain(item: Any) -> Any:
    """A named instance from JSON: an int anchor, or a (class, box) pair (from {"class", "box"} or [class, box])."""
    if isinstance(item, dict):
        if set(item) != {"class", "box"}:
            raise InputError(f'a named instance is an anchor index or {{"class": ..., "box": [x0, y0, x1, y1]}}; '
                             f"got keys {sorted(item)}")
        return (item["class"], tuple(item["box"]) if isinstance(item["box"], list) else item["box"])
    if isinstance(item, list) and len(item) == 2:
        return (item[0], tuple(item[1]) if isinstance(item[1], list) else item[1])
    if isinstance(item, float) and item.is_integer():
        return int(item)
    return item


def _named(value: Any, label: str) -> NamedInstances:
    if not isinstance(value, list):
        raise InputError(f"{label}: 'instances' is a list of instances (anchor indices or class and box); got "
                         f"{type(value).__name__}")
    return NamedInstances(tuple(_plain(item) for item in value))


def _selection(parameters: dict) -> InstanceSelection:
    defaults = InstanceSelection()
    min_score = parameters.get("min_score", defaults.min_score)
    max_instances = parameters.get("max_instances", defaults.max_instances)
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)):
        raise InputError(f"parameter 'min_score' is a score in [0, 1]; got {min_score!r}")
    if isinstance(max_instances, float) and max_instances.is_integer():
        max_instances = int(max_instances)
    return InstanceSelection(min_score=float(min_score), max_instances=max_instances)


def instance_specs(parameters: dict, per_image: list, count: int) -> list:
    """Each image's InstanceSelection or NamedInstances from the request's parameters and (v1) the instances' own
    "instances"; an InputError names what is wrong."""
    selection = _selection(parameters)
    shared = parameters.get("instances")
    if shared is not None and (not isinstance(shared, list) or len(shared) != count):
        raise InputError(f"parameter 'instances' lists instances per image: a list of {count} lists; got {shared!r}")
    specs = []
    for i in range(count):
        own = per_image[i] if i < len(per_image) else None
        value = own if own is not None else (shared[i] if shared is not None else None)
        specs.append(selection if value is None else _named(value, f"instance {i}"))
    return specs


@dataclass
class ImageRows:
    """One image's instances: boxes [I, 4], scores [I], classes [I], anchors [I], maps {method: [I, H, W]}."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    anchors: np.ndarray
    maps: dict


def padded(rows: list[ImageRows], methods: tuple[str, ...], size: tuple[int, int]):
    """(logits, classes, probabilities, maps, facts) per image, padded to the largest instance count (see the module
    docstring): logits float32 [N, I, 7] = box, score, class, anchor (what v1 predictions are read from)."""
    n, width = len(rows), max([len(r.scores) for r in rows] + [0])
    boxes = np.zeros((n, width, 4), np.float32)
    scores = np.zeros((n, width), np.float32)
    classes = np.full((n, width), PAD_CLASS, np.int64)
    anchors = np.full((n, width), PAD_CLASS, np.int64)
    maps = {m: np.zeros((n, width, *size), np.float32) for m in methods}
    for i, r in enumerate(rows):
        k = len(r.scores)
        boxes[i, :k], scores[i, :k], classes[i, :k], anchors[i, :k] = r.boxes, r.scores, r.classes, r.anchors
        for m in methods:
            maps[m][i, :k] = r.maps[m]
    count = np.array([len(r.scores) for r in rows], np.int64)
    logits = np.concatenate([boxes, scores[..., None], classes[..., None].astype(np.float32),
                             anchors[..., None].astype(np.float32)], axis=2)
    facts = {"boxes": boxes, "scores": scores, "classes": classes, "anchors": anchors, "instance_count": count}
    return logits, classes, scores.astype(np.float64), maps, facts


def detections(explainer, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [N, A, 4], activated class scores [N, A, C]) of every anchor: the explain graph's detection outputs
    with placeholder instances (what the detection task's own instance selection reads)."""
    from ..graph_names import DETECTION_BOXES, DETECTION_SCORES

    manifest = explainer.bundle.manifest
    feed = explainer.task.explain_feed(manifest, len(images), None, None, explainer.class_names)
    with explainer.scorer.in_use("predict"):
        backend = explainer.backend
        graph = backend.explain(backend.asarray(images), {k: backend.asarray(v) for k, v in feed.items()})
        return (np.asarray(backend.to_host(graph[DETECTION_BOXES]), np.float32),
                np.asarray(backend.to_host(graph[DETECTION_SCORES]), np.float32))


def predicted_rows(explainer, images: np.ndarray, specs: list) -> list[ImageRows]:
    """Each image's selected or named instances without an explanation (the same choice explain makes)."""
    boxes, scores = detections(explainer, images)
    size = tuple(explainer.bundle.manifest.input_size)
    rows = []
    for i, spec in enumerate(specs):
        if isinstance(spec, NamedInstances):
            chosen = [_named_instance(item, boxes[i], scores[i], size, explainer.class_names,
                                      f"instance {i}, named instance {j}")[:2] for j, item in enumerate(spec.items)]
        else:
            chosen = nms_instances(boxes[i], scores[i], spec, model_iou_threshold(explainer.bundle.manifest))
        anchors = np.array([a for a, _ in chosen], np.int64)
        classes = np.array([c for _, c in chosen], np.int64)
        rows.append(ImageRows(boxes[i, anchors].reshape(-1, 4), scores[i, anchors, classes], classes, anchors, {}))
    return rows


def explained_rows(explainer, images: np.ndarray, specs: list, methods: tuple[str, ...], on_batch=None):
    """(each image's explained instances with their maps, the Explainer calls' timings summed): one call per kind of
    spec (each distinct InstanceSelection; all named instances together)."""
    groups: dict[Any, list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault("named" if isinstance(spec, NamedInstances) else spec, []).append(i)
    rows: list[ImageRows | None] = [None] * len(specs)
    timings: dict[str, float] = {}
    for key, index in groups.items():
        instances = [list(specs[i].items) for i in index] if key == "named" else key
        got = explainer.explain(images[index], methods=methods, instances=instances, on_batch=on_batch)
        for name, value in (got.timings or {}).items():
            if isinstance(value, (int, float)):
                timings[name] = timings.get(name, 0) + value
        for local, i in enumerate(index):
            mine = np.flatnonzero(got.image_index == local)
            rows[i] = ImageRows(got.boxes[mine], got.probabilities[mine].astype(np.float32), got.classes[mine],
                                got.anchors[mine], {m: got.maps[m][mine] for m in methods})
    return rows, timings


class DetectionPayloads:
    """Encodings of a detector's instances (boxes, classes, scores) and per-instance maps and metrics."""

    v2_prediction_outputs = ("boxes", "scores", "classes", "class_names", "anchors", "instance_count")
    v2_explanation_outputs: tuple[str, ...] = ()
    score_name = "matched score"
    request_parameters = INSTANCE_PARAMETERS  # read here, not by serve's request_settings

    # --- serving
    def v1_regions(self, shared: Any, instances: list, size: tuple[int, int], max_pixels: int) -> None:
        from ..serve.request_errors import BadRequest

        if shared is not None or any(isinstance(i, dict) and "region" in i for i in instances):
            raise BadRequest(NOT_HERE.format(name="region"))
        return None

    def v1_instances(self, parameters: dict, instances: list) -> list:
        """Each image's instance spec from a v1 body (targets and regions are refused: they do not apply)."""
        from ..serve.request_errors import BadRequest

        for name in ("target", "region"):
            if parameters.get(name) is not None or any(isinstance(i, dict) and name in i for i in instances):
                raise BadRequest(NOT_HERE.format(name=name))
        own = [i.get("instances") if isinstance(i, dict) else None for i in instances]
        try:
            return instance_specs(parameters, own, len(instances))
        except InputError as exc:
            raise BadRequest(str(exc)) from None

    def v2_instances(self, parameters: dict, region_tensor, count: int) -> list:
        """Each image's instance spec from v2 parameters (`instances` as JSON text)."""
        from ..serve.request_errors import BadRequest

        for name in ("target", "region"):
            if parameters.get(name) is not None:
                raise BadRequest(NOT_HERE.format(name=name))
        if region_tensor is not None:
            raise BadRequest(NOT_HERE.format(name="region") + " (an input tensor named 'region' was sent)")
        parameters = dict(parameters)
        if isinstance(parameters.get("instances"), str):
            try:
                parameters["instances"] = json.loads(parameters["instances"])
            except ValueError as exc:
                raise BadRequest(f"parameter 'instances' is JSON text (a list of {count} lists); {exc}") from None
        try:
            return instance_specs(parameters, [], count)
        except InputError as exc:
            raise BadRequest(str(exc)) from None

    def v2_regions(self, tensor, parameter: Any, count: int, size: tuple[int, int]) -> None:
        return None

    def v2_input_types(self, manifest) -> list[dict]:
        return []

    def v2_output_types(self, manifest) -> list[dict]:
        return [
            {"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
            {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "classes", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "class_names", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "anchors", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "instance_count", "datatype": "INT64", "shape": [-1]},
        ]

    def v2_map_shape(self, manifest) -> list[int]:
        return [-1, -1, *manifest.input_size]

    def serve_batch(self, explainer, images: np.ndarray, methods: tuple[str, ...], specs: list | None, on_batch):
        """(logits, classes, probabilities, maps, facts, timings) of a server batch, one row per image padded over
        instances (`padded`); classes and probabilities are None without methods (predictions only)."""
        specs = specs if specs is not None else [InstanceSelection()] * len(images)
        if methods:
            rows, timings = explained_rows(explainer, images, specs, methods, on_batch)
        else:
            rows, timings = predicted_rows(explainer, images, specs), {}
        logits, classes, probabilities, maps, facts = padded(rows, methods, tuple(explainer.bundle.manifest.input_size))
        if not methods:
            classes = probabilities = None
        return logits, classes, probabilities, maps, facts, timings

    def predict(self, explainer, images: np.ndarray) -> np.ndarray:
        """float32 [N, I, 7] (box, score, class, anchor per kept detection, padded) at the default selection."""
        return padded(predicted_rows(explainer, images, [InstanceSelection()] * len(images)), (),
                      tuple(explainer.bundle.manifest.input_size))[0]

    def explained_facts(self, explanation) -> dict[str, np.ndarray]:
        return {}

    def v1_predictions(self, logits: np.ndarray, top_k: int, manifest) -> list[dict]:
        """Per image: the kept (or explained) detections' boxes, classes, class names, scores and anchors."""
        from ..serve.predictions import class_label

        answers = []
        for image in logits:
            real = image[image[:, 5] >= 0]
            classes = [int(c) for c in real[:, 5]]
            answers.append({"boxes": real[:, :4].tolist(), "classes": classes,
                            "class_names": [class_label(manifest.class_names, c) for c in classes],
                            "scores": [float(s) for s in real[:, 4]], "anchors": [int(a) for a in real[:, 6]]})
        return answers

    def v1_explanation(self, result, i: int, settings, picture, manifest) -> dict:
        """Image i's explanation: one entry per instance with its maps and/or overlays."""
        from ..serve.predictions import class_label, overlay_png_base64

        facts = result.facts
        entries = []
        for j in range(int(facts["instance_count"][i])):
            cls = int(facts["classes"][i, j])
            entry: dict[str, Any] = {"box": [float(v) for v in facts["boxes"][i, j]], "class": cls,
                                     "class_name": class_label(manifest.class_names, cls),
                                     "score": float(facts["scores"][i, j]), "anchor": int(facts["anchors"][i, j])}
            if "maps" in settings.returns:
                entry["maps"] = {m: np.ascontiguousarray(result.maps[m][i, j]) for m in settings.methods}
            if "overlays" in settings.returns:
                entry["overlays"] = {m: overlay_png_base64(picture, result.maps[m][i, j], settings.colormap,
                                                           settings.alpha) for m in settings.methods}
            entries.append(entry)
        return {"instances": entries}

    def v1_target(self, classes, probabilities, facts: dict, i: int, manifest) -> dict:
        return {}

    def v2_tensors(self, logits, classes, probabilities, facts: dict, top_k: int, manifest,
                   outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The padded instance tensors (the module docstring), trimmed to this request's largest instance count."""
        from ..serve.predictions import class_label

        width = int(facts["instance_count"].max()) if len(facts["instance_count"]) else 0
        tensors = {name: np.ascontiguousarray(facts[name][:, :width]) for name in ("boxes", "scores", "classes",
                                                                                   "anchors")}
        tensors["instance_count"] = facts["instance_count"]
        if "class_names" in outputs:
            tensors["class_names"] = np.array(
                [[class_label(manifest.class_names, int(c)).encode("utf-8") if c >= 0 else b"" for c in row]
                 for row in tensors["classes"]], dtype=np.object_).reshape(tensors["classes"].shape)
        return tensors

    # --- explain-dataset
    def dataset_fields(self) -> list[tuple[str, Any]]:
        """One row per instance: its index within the image, its anchor and its box (x0, y0, x1, y1, input
        pixels); class_index, class_name and probability hold its class and score."""
        import pyarrow as pa

        return [("instance", pa.int64()), ("anchor", pa.int64()), ("box", pa.list_(pa.float64(), 4))]

    def dataset_instances(self) -> InstanceSelection:
        """What explain-dataset explains in each image: the default selection (module docstring)."""
        return InstanceSelection()

    def dataset_row(self, explanation, j: int, region: str | None) -> dict[str, Any]:
        image = explanation.image_index
        return {"instance": int((image[:j] == image[j]).sum()), "anchor": int(explanation.anchors[j]),
                "box": [float(v) for v in explanation.boxes[j]]}

    def dataset_regions(self, values: list, size: tuple[int, int], sources: list[str]) -> tuple[None, dict]:
        """No regions; a row that names one becomes an error row saying why."""
        errors = {i: f"{sources[i]}: {NOT_HERE.format(name='region')}" for i, value in enumerate(values)
                  if value is not None}
        return None, errors

    # --- evaluate
    row_unit = "instances"  # what one row of an evaluation is

    def evaluate(self, explainer, image: np.ndarray, methods: tuple[str, ...], name: str, step: int, region,
                 on_batch=None, before_method=None, road_percentiles=None):
        """(explanation, Evaluation) of one preprocessed image [1, 3, H, W]: one row per instance the selection
        `region` (an InstanceSelection; None: the default) keeps, each method's maps scored by the instance's
        matched score (metrics/detection.py)."""
        from ..metrics.road import refuse_road

        refuse_road("detection", road_percentiles)
        selection = region if region is not None else InstanceSelection()
        explanation = explainer.explain(image, methods=tuple(methods), names=[name], on_batch=on_batch,
                                        instances=selection)
        maps = {method: explanation.maps[method] for method in methods}
        names = [f"{name} instance {k}" for k in range(len(explanation.classes))]
        return explanation, self.evaluate_maps(explainer, image, maps, explanation, step, names, before_method)

    def evaluate_maps(self, explainer, images: np.ndarray, maps: dict, explanation, step: int, names: list[str],
                      before_method=None, road_percentiles=None):
        """The Evaluation (metrics/evaluation.py's record) of each method's maps, one row per instance."""
        from ..metrics.detection import evaluate_detection_maps
        from ..metrics.evaluation import Evaluation, MethodScores
        from ..metrics.road import refuse_road

        refuse_road("detection", road_percentiles)

        scores = {}
        for method, method_maps in maps.items():
            if before_method is not None:
                before_method()
            if len(explanation.classes) == 0:  # no detection kept: no row to score
                empty = np.zeros(0)
                scores[method] = MethodScores(per_image={k: empty for k in ("average_drop", "increase_in_confidence",
                                                                             "deletion_auc", "insertion_auc")},
                                              deletion=(empty, np.zeros((0, 0))), insertion=(empty, np.zeros((0, 0))))
                continue
            got = evaluate_detection_maps(explainer, images, explanation, {method: method_maps}, step)[method]
            scores[method] = MethodScores(
                per_image={"average_drop": got.average_drop, "increase_in_confidence": got.increase,
                           "deletion_auc": got.deletion_auc, "insertion_auc": got.insertion_auc},
                deletion=(got.fractions, got.deletion_curve), insertion=(got.fractions, got.insertion_curve))
        return Evaluation(scores, list(names), np.asarray(explanation.classes, np.int64), int(step))

    def evaluation_facts(self, explanation) -> list[dict[str, Any]]:
        """Per instance row: its instance index in the image, anchor, box, class name and score."""
        return [{"instance": k, "anchor": int(explanation.anchors[k]), "box": [float(v) for v in explanation.boxes[k]],
                 "class_name": explanation.class_name(k), "score": float(explanation.probabilities[k])}
                for k in range(len(explanation.classes))]

    def evaluation_subject(self, region) -> str:
        """What `fusioncam evaluate` explains and scores, for its report."""
        selection = region if region is not None else InstanceSelection()
        return (f"each detection the model keeps (best class score >= {selection.min_score:g}, class-wise NMS, at "
                f"most {selection.max_instances} per image), one row per instance, each map scored by the instance's "
                f"matched score (D-RISE's protocol: max over the model's predictions of IoU with the instance's box "
                f"x its class score)")

    def trimmed_maps(self, maps: dict, facts: dict) -> dict:
        """The maps [N, I, H, W] trimmed like v2_tensors' instance tensors."""
        width = int(facts["instance_count"].max()) if len(facts["instance_count"]) else 0
        return {m: np.ascontiguousarray(array[:, :width]) for m, array in maps.items()}


__all__ = ["DetectionPayloads", "INSTANCE_PARAMETERS", "ImageRows", "NamedInstances", "detections",
           "explained_rows", "instance_specs", "padded", "predicted_rows"]
