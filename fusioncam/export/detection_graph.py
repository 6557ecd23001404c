"""Detection bundles' graphs: a dense one-stage detector's raw head output, cut before NMS, explained per instance.

Layouts of the raw output (LAYOUTS), both with boxes as cx, cy, w, h in input pixels:

- "yolov8": [N, 4 + C, A] (Ultralytics YOLOv8/YOLO11 ONNX export): box, then C class scores per anchor, already
  sigmoid-activated in the export; an anchor's class score is that value;
- "yolov5": [N, A, 5 + C] (YOLOv5/YOLOX): box, objectness, C class probabilities; an anchor's class score is
  objectness x class probability (as the models' own NMS ranks them).

Both become the canonical per-anchor boxes [N, A, 4] (x0, y0, x1, y1) and class scores [N, A, C] appended to the
graph. Then:

- the explain graph takes an instance per row (ANCHOR, class TARGET, REFERENCE_BOX, INSTANCE_IMAGE) and
  differentiates that one instance's class score s[n, anchor, class] (ODAM-style: one instance's score, not a sum
  over boxes) with respect to the target layer;
- the scorer takes a class and a reference box per row and returns D-RISE's similarity of the best-matching
  prediction, max over anchors of IoU(box_a, reference) x s[a, class], computed in-graph so Score-CAM's sweep stays
  on the device.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError, LayerError, ModelLoadError
from ..graph_names import (ACTIVATIONS, ANCHOR, ANCHOR_USED, DETECTION_BOXES, DETECTION_SCORES, GRADIENTS, INPUT,
                           INSTANCE_BOX, INSTANCE_IMAGE, INSTANCE_IMAGE_USED, LOGITS, REFERENCE_BOX,
                           REFERENCE_BOX_USED, SCORE, TARGET, TARGET_USED, layer_activations, layer_gradients)
from .classifier_graph import BATCH_DIM, Classifier, prepare_scores_graph, tensor_shapes
from .explain_graph import TARGET_GRADIENT, _set_outputs, _standard_names, standard_names_of, target_maps
from .graph_surgery import prune_to_outputs
from .layers import Layer, candidate_layers
from .onnx_loading import model_opset
from .several_layers_graph import distinct_layers, several_layer_gradients
from .target_layout import NCHW

LAYOUTS = ("yolov8", "yolov5")
DETECTION_RESERVED = [INPUT, ANCHOR, TARGET, REFERENCE_BOX, INSTANCE_IMAGE, SCORE, LOGITS, ACTIVATIONS, GRADIENTS,
                      TARGET_USED, ANCHOR_USED, INSTANCE_BOX, REFERENCE_BOX_USED, INSTANCE_IMAGE_USED,
                      DETECTION_BOXES, DETECTION_SCORES]
UNION_FLOOR = 1e-9  # IoU's denominator floor: two empty boxes have IoU 0, not NaN
ULTRALYTICS_KEYS = ("task", "names", "imgsz", "stride")


@dataclass
class Detector(Classifier):
    """A dense detector graph: one [N,3,H,W] input and the raw head output `logits_name` in `layout`."""

    layout: str = "yolov8"
    num_anchors: int = 0
    metadata: dict | None = None  # what the file's Ultralytics metadata said (task, names, imgsz, stride)


def checked_layout(layout) -> str:
    """The layout as given, or an InputError naming the layouts fusioncam reads."""
    if layout not in LAYOUTS:
        raise InputError(f"layout={layout!r} is not a detection output layout fusioncam reads; give one of "
                         f"{', '.join(LAYOUTS)} (yolov8: [N, 4+C, A]; yolov5: [N, A, 5+C] with objectness)")
    return layout


def ultralytics_metadata(model: onnx.ModelProto) -> dict:
    """The Ultralytics facts an ONNX file carries in metadata_props (task, names as a list by index, imgsz, stride),
    each only where the file says it; names and imgsz are Python literals in those files."""
    import ast

    facts: dict = {}
    for prop in model.metadata_props:
        if prop.key not in ULTRALYTICS_KEYS:
            continue
        try:
            value = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError):
            value = prop.value
        facts[prop.key] = value
    names = facts.get("names")
    if isinstance(names, dict):
        facts["names"] = [str(names[key]) for key in sorted(names)]
    return facts


def prepare_detector(model: onnx.ModelProto, origin: str, layout: str, input_size: tuple[int, int] | None = None,
                     output: str | None = None) -> Detector:
    """Validate a detector's raw output against `layout` (static A and C) with a dynamic batch; `model` is consumed."""
    layout = checked_layout(layout)
    metadata = ultralytics_metadata(model)
    if input_size is None and isinstance(metadata.get("imgsz"), (list, tuple)) and len(metadata["imgsz"]) == 2:
        input_size = tuple(int(v) for v in metadata["imgsz"])
    model, input_name, raw, size, weights, output_note = prepare_scores_graph(model, origin, input_size, output)
    shape = tensor_shapes(model).get(raw)
    static = shape is not None and len(shape) == 3 and all(isinstance(d, int) for d in shape[1:])
    if layout == "yolov8":
        ok = static and shape[1] > 4
        classes, anchors = (shape[1] - 4, shape[2]) if ok else (0, 0)
        want = "[N, 4 + C, A] (box cx, cy, w, h then C class scores per anchor)"
    else:
        ok = static and shape[2] > 5
        classes, anchors = (shape[2] - 5, shape[1]) if ok else (0, 0)
        want = "[N, A, 5 + C] (box cx, cy, w, h, objectness, C class probabilities per anchor)"
    if not ok:
        raise ModelLoadError(f"{origin}: output '{raw}' has shape {shape}, which does not match layout {layout!r}: "
                             f"expected {want} with static sizes; give the layout the file was exported in "
                             f"({', '.join(LAYOUTS)}), or the raw head output with output=NAME")
    names = metadata.get("names")
    if isinstance(names, list) and len(names) != classes:
        raise ModelLoadError(f"{origin}: its metadata names {len(names)} classes but the output has {classes}")
    return Detector(model=model, input_name=input_name, logits_name=raw, input_size=size, num_classes=classes,
                    weights=weights, output_note=output_note, layout=layout, num_anchors=anchors,
                    metadata=metadata or None)


def auto_detection_target(detector: Detector) -> Layer:
    """The last channels-first map with spatial size > 1 whose channel count is not that of a per-level prediction
    or its parts (1, 2, 4, C, C + 1, C + 4, C + 5: objectness, centres, boxes, class scores)."""
    classes = detector.num_classes
    widths = {1, 2, 4, classes, classes + 1, classes + 4, classes + 5}  # objectness, centres, boxes, scores
    layers = [layer for layer in candidate_layers(detector)  # channels-first maps only: not tokens, not the output
              if layer.layout.kind == NCHW and layer.name != detector.logits_name and min(layer.spatial) > 1
              and layer.channels not in widths]
    if not layers:
        raise LayerError("no 4-D feature map with spatial size > 1 feeds the detections; pass a target layer "
                         "explicitly (see `fusioncam layers MODEL`)")
    return layers[-1]


class _Nodes:
    """Appends `detect/`-prefixed nodes and constants to a graph; reductions in the model's opset's form."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.opset = model_opset(model)
        self.made: set[str] = set()

    def const(self, name: str, value) -> str:
        full = f"detect/{name}"
        if full not in self.made:
            self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), full))
            self.made.add(full)
        return full

    def add(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        out = name if name in DETECTION_RESERVED else f"detect/{name}"
        self.graph.node.append(helper.make_node(op, inputs, [out], name=f"detect/{name}", **attrs))
        return out

    def reduce(self, op: str, x: str, axes: list[int], name: str, keepdims: int = 0) -> str:
        """ReduceSum (axes input since opset 13) or ReduceMax (since opset 18) over `axes`."""
        if op == "ReduceSum" or self.opset >= 18:
            return self.add(op, [x, self.const(f"axes_{'_'.join(map(str, axes))}", np.array(axes, np.int64))], name,
                            keepdims=keepdims)
        return self.add(op, [x], name, axes=axes, keepdims=keepdims)

    def slice(self, x: str, start: int, stop: int, axis: int, name: str) -> str:
        return self.add("Slice", [x, self.const(f"i{start}", np.array([start], np.int64)),
                                  self.const(f"i{stop}", np.array([stop], np.int64)),
                                  self.const(f"i{axis}", np.array([axis], np.int64))], name)


def decode(nodes: _Nodes, raw: str, detector: Detector) -> tuple[str, str]:
    """(boxes [N, A, 4] x0, y0, x1, y1; class scores [N, A, C]) from the raw output in the detector's layout."""
    big = 1 << 30
    if detector.layout == "yolov8":
        per_anchor = nodes.add("Transpose", [raw], "per_anchor", perm=[0, 2, 1])  # [N, A, 4 + C]
        scores = nodes.slice(per_anchor, 4, big, 2, "class_scores")
    else:
        per_anchor = raw
        objectness = nodes.slice(per_anchor, 4, 5, 2, "objectness")
        scores = nodes.add("Mul", [objectness, nodes.slice(per_anchor, 5, big, 2, "class_probabilities")],
                           "class_scores")
    centre = nodes.slice(per_anchor, 0, 2, 2, "centre")
    half = nodes.add("Mul", [nodes.slice(per_anchor, 2, 4, 2, "size"), nodes.const("half", np.array(0.5, np.float32))],
                     "half_size")
    boxes = nodes.add("Concat", [nodes.add("Sub", [centre, half], "top_left"),
                                 nodes.add("Add", [centre, half], "bottom_right")], "boxes", axis=2)
    return boxes, scores


def _onehot(nodes: _Nodes, index: str, count: int, shape: list[int], name: str) -> str:
    """float 1 where `index` (int64 [N]) equals a position of `count`, broadcast as `shape` (one axis of -1 = count)."""
    ids = nodes.const(f"{name}_ids", np.arange(count, dtype=np.int64).reshape([count if d == -1 else 1 for d in shape]))
    column = nodes.add("Reshape", [index, nodes.const(f"{name}_shape", np.array([-1] + [1] * (len(shape) - 1),
                                                                                 np.int64))], f"{name}_column")
    return nodes.add("Cast", [nodes.add("Equal", [column, ids], f"{name}_bool")], name, to=TensorProto.FLOAT)


def _at_anchor(nodes: _Nodes, values: str, anchor_onehot: str, name: str) -> str:
    """values [N, A, D] at each row's anchor: [N, D]."""
    return nodes.reduce("ReduceSum", nodes.add("Mul", [values, anchor_onehot], f"{name}_only"), [1], name)


def build_detection_explain(detector: Detector, layer: Layer | Sequence[Layer]) -> onnx.ModelProto:
    """Inputs input, anchor [N], target [N] (class), reference_box [N, 4], instance_image [N]; outputs the
    instance's class scores (logits [N, C]), activations, gradients of s[anchor, class], the instance's facts and
    every anchor's boxes and scores. Several layers (a feature pyramid's levels): each further layer's activations/i,
    gradients/i from the same backward pass (several_layers_graph.py)."""
    layers = [layer] if isinstance(layer, Layer) else list(layer)
    distinct_layers([one.name for one in layers])
    model, raw, targets = standard_names_of(detector, [one.name for one in layers], DETECTION_RESERVED)
    if INPUT in targets:
        raise LayerError("the target layer cannot be the image input itself; pick a feature map")
    graph = model.graph
    graph.input.extend([helper.make_tensor_value_info(ANCHOR, TensorProto.INT64, [BATCH_DIM]),
                        helper.make_tensor_value_info(TARGET, TensorProto.INT64, [BATCH_DIM]),
                        helper.make_tensor_value_info(REFERENCE_BOX, TensorProto.FLOAT, [BATCH_DIM, 4]),
                        helper.make_tensor_value_info(INSTANCE_IMAGE, TensorProto.INT64, [BATCH_DIM])])
    nodes = _Nodes(model)
    boxes, scores = decode(nodes, raw, detector)
    anchors, classes = detector.num_anchors, detector.num_classes
    anchor_onehot = _onehot(nodes, ANCHOR, anchors, [1, -1, 1], "anchor_onehot")  # [N, A, 1]
    class_onehot = _onehot(nodes, TARGET, classes, [1, 1, -1], "class_onehot")  # [N, 1, C]
    seed = nodes.add("Mul", [anchor_onehot, class_onehot], "seed")
    instance_scores = _at_anchor(nodes, scores, anchor_onehot, "instance_scores")
    instance_box = _at_anchor(nodes, boxes, anchor_onehot, "instance_box")
    from .autodiff import differentiate

    gradient_of = several_layer_gradients(len(layers))
    model = differentiate(model, wrt=targets[0], of=scores, seed=seed, grad_name=TARGET_GRADIENT,
                          also={targets[i]: gradient_of[i] for i in range(1, len(layers))})
    float_, int64 = TensorProto.FLOAT, TensorProto.INT64
    maps = []
    for index, one in enumerate(layers):
        activations, gradients = target_maps(model, targets[index], one, gradient_of[index],
                                             suffix="" if index == 0 else f"/{index}")
        k, h, w = one.shape[1:]
        maps.append([(activations, layer_activations(index), float_, [BATCH_DIM, k, h, w]),
                     (gradients, layer_gradients(index), float_, [BATCH_DIM, k, h, w])])
    outputs = [
        (instance_scores, LOGITS, float_, [BATCH_DIM, classes]),
        *maps[0],
        (TARGET, TARGET_USED, int64, [BATCH_DIM]),
        (ANCHOR, ANCHOR_USED, int64, [BATCH_DIM]),
        (instance_box, INSTANCE_BOX, float_, [BATCH_DIM, 4]),
        (REFERENCE_BOX, REFERENCE_BOX_USED, float_, [BATCH_DIM, 4]),
        (INSTANCE_IMAGE, INSTANCE_IMAGE_USED, int64, [BATCH_DIM]),
        (boxes, DETECTION_BOXES, float_, [BATCH_DIM, anchors, 4]),
        (scores, DETECTION_SCORES, float_, [BATCH_DIM, anchors, classes]),
        *(output for more in maps[1:] for output in more),
    ]
    _set_outputs(model, outputs)
    prune_to_outputs(model, [name for _, name, _, _ in outputs])
    return model


def iou_nodes(nodes: _Nodes, boxes: str, reference: str) -> str:
    """IoU [N, A] of boxes [N, A, 4] with reference [N, 4] (x0, y0, x1, y1; empty boxes have IoU 0)."""
    ref = nodes.add("Unsqueeze", [reference, nodes.const("axis1", np.array([1], np.int64))], "reference_3d")
    low = nodes.add("Max", [nodes.slice(boxes, 0, 2, 2, "box_low"), nodes.slice(ref, 0, 2, 2, "ref_low")], "inter_low")
    high = nodes.add("Min", [nodes.slice(boxes, 2, 4, 2, "box_high"), nodes.slice(ref, 2, 4, 2, "ref_high")],
                     "inter_high")

    def area(low_: str, high_: str, name: str) -> str:
        sides = nodes.add("Relu", [nodes.add("Sub", [high_, low_], f"{name}_sides_raw")], f"{name}_sides")
        return nodes.add("Mul", [nodes.slice(sides, 0, 1, 2, f"{name}_w"), nodes.slice(sides, 1, 2, 2, f"{name}_h")],
                         f"{name}_area")  # [N, A, 1] or [N, 1, 1]

    inter = area(low, high, "inter")
    union = nodes.add("Sub", [nodes.add("Add", [area("detect/box_low", "detect/box_high", "box"),
                                                area("detect/ref_low", "detect/ref_high", "ref")], "area_sum"), inter],
                      "union")
    iou = nodes.add("Div", [inter, nodes.add("Max", [union, nodes.const("union_floor", np.array(UNION_FLOOR,
                                                                                               np.float32))],
                                             "union_floored")], "iou_3d")
    return nodes.reduce("ReduceSum", iou, [2], "iou")


def build_detection_scorer(detector: Detector) -> onnx.ModelProto:
    """Inputs input, target [N] (class per row), reference_box [N, 4]; output score [N] = max over anchors of
    IoU(box_a, reference) x s[a, class] (D-RISE's similarity of the best-matching prediction)."""
    model, raw, _ = _standard_names(detector, None, DETECTION_RESERVED)
    graph = model.graph
    graph.input.extend([helper.make_tensor_value_info(TARGET, TensorProto.INT64, [BATCH_DIM]),
                        helper.make_tensor_value_info(REFERENCE_BOX, TensorProto.FLOAT, [BATCH_DIM, 4])])
    nodes = _Nodes(model)
    boxes, scores = decode(nodes, raw, detector)
    class_onehot = _onehot(nodes, TARGET, detector.num_classes, [1, 1, -1], "class_onehot")
    class_score = nodes.reduce("ReduceSum", nodes.add("Mul", [scores, class_onehot], "class_only"), [2],
                               "class_score")  # [N, A]
    similarity = nodes.add("Mul", [iou_nodes(nodes, boxes, REFERENCE_BOX), class_score], "similarity")
    nodes.reduce("ReduceMax", similarity, [1], SCORE)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, [BATCH_DIM]))
    prune_to_outputs(model, [SCORE])
    return model


def metadata_note(detector: Detector) -> str:
    """What the file's Ultralytics metadata said and was used, for the export description."""
    if not detector.metadata:
        return ""
    return "Ultralytics metadata read: " + json.dumps(detector.metadata, sort_keys=True)


__all__ = ["Detector", "LAYOUTS", "auto_detection_target", "build_detection_explain", "build_detection_scorer",
           "checked_layout", "metadata_note", "prepare_detector", "ultralytics_metadata"]
