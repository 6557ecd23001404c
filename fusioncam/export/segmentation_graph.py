"""Segmentation bundles' graphs: per-pixel class scores [N, C, H', W'] explained for a class over a region.

The definitions (docs/segmentation.md):

- the region weights `w` [N, H', W']: the region mask given at the input resolution [N, H, W] resized to the
  output's resolution by area averaging (`F.interpolate(mode="area")`, i.e. adaptive average pooling, done in-graph
  as two MatMuls with constant pooling matrices); a mask row with any negative value asks for the predicted region
  instead, `w = [argmax_k y_k(i, j) == c]`;
- the target class `c` per image: given, or (target -1) the class predicted on most output pixels (ties: lowest);
- the explain graph differentiates the region score `S = sum_ij w_ij * y_c(i, j)` (pytorch-grad-cam's
  SemanticSegmentationTarget with the mask at the output resolution) with respect to the target layer;
- the scorer returns the region probability `P = sum_ij w_ij * softmax_k(y(i, j))_c / sum_ij w_ij` for each row,
  given that row's class and region weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import LayerError, ModelLoadError
from .classifier_graph import BATCH_DIM, Classifier, prepare_scores_graph, tensor_shapes
from .binary_map import two_class_scores
from ..graph_names import (ACTIVATIONS, GRADIENTS, INPUT, LOGITS, REGION, REGION_WEIGHTS, SCORE, TARGET,
                           TARGET_USED)
from .explain_graph import TARGET_GRADIENT, _set_outputs, _standard_names, target_maps
from .graph_surgery import prune_to_outputs
from .layers import Layer, candidate_layers

SEGMENTATION_RESERVED = [INPUT, TARGET, REGION, REGION_WEIGHTS, SCORE, LOGITS, ACTIVATIONS, GRADIENTS, TARGET_USED]
EMPTY_REGION_FLOOR = 1e-12  # P's denominator floor: an empty region scores 0 instead of NaN


@dataclass
class Segmenter(Classifier):
    """A segmentation graph: one `[N,3,H,W]` input and per-pixel class scores `logits_name` [N, C, H', W']."""

    output_size: tuple[int, int] = (0, 0)  # (H', W') of the class scores
    binary: bool = False  # a one-channel map read as two classes [0, y] (binary_map.py)


def prepare_segmenter(model: onnx.ModelProto, origin: str, input_size: tuple[int, int] | None = None,
                      output: str | None = None) -> Segmenter:
    """Validate a segmentation model's interface (class scores [N, C, H', W'], static C, H', W'), dynamic batch.

    `output` names the graph output holding the scores (default: the first). `model` is consumed: its large weights
    move into the segmenter's WeightStash (see weight_stash)."""
    model, input_name, logits, size, weights, output_note = prepare_scores_graph(model, origin, input_size, output)
    shape = tensor_shapes(model).get(logits)
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise ModelLoadError(
            f"{origin}: output '{logits}' has shape {shape}; a segmentation model must output per-pixel class "
            f"scores [N, C, H', W'] with static C, H', W' (for image-level scores [N, C] use export_torch/export_onnx)"
        )
    binary = shape[1] == 1
    if binary:  # a binary map (DBNet's text probability): scores [0, y], softmax = [1 - sigmoid, sigmoid]
        logits, binary_note = two_class_scores(model, logits)
        output_note = "; ".join(note for note in (output_note, binary_note) if note)
        shape = (shape[0], 2, *shape[2:])
    return Segmenter(model=model, input_name=input_name, logits_name=logits, input_size=size, num_classes=shape[1],
                     weights=weights, output_note=output_note, output_size=(shape[2], shape[3]), binary=binary)


def auto_segmentation_target(segmenter: Segmenter) -> Layer:
    """The last spatial feature map before the per-pixel classifier: the last candidate whose channel count is not
    the number of classes (so neither the class scores nor their upsampled copies; for a binary map, not one
    channel either: its logit and the appended background channel)."""
    excluded = {segmenter.num_classes, 1} if segmenter.binary else {segmenter.num_classes}
    layers = [layer for layer in candidate_layers(segmenter)
              if min(layer.spatial) > 1 and layer.channels not in excluded]
    if not layers:
        raise LayerError("no 4-D feature map with spatial size > 1 feeds the class scores; pass a target layer "
                         "explicitly (see `fusioncam layers MODEL`)")
    return layers[-1]


def area_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out_size, in_size] adaptive-average-pooling weights along one axis (PyTorch's `mode="area"`): output i
    averages the inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1."""
    matrix = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        stop = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


class _Nodes:
    """Appends prefixed nodes and constants to a graph (names under `segment/`)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.made: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer `segment/<name>` (added once: a second call with the same name reuses it)."""
        full = f"segment/{name}"
        if full not in self.made:
            self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), full))
            self.made.add(full)
        return full

    def add(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        """Append node `op(inputs)`; its output is `segment/<name>`, or the graph-level name it stands for."""
        out = name if name in (TARGET_USED, REGION_WEIGHTS, SCORE) else f"segment/{name}"
        self.graph.node.append(helper.make_node(op, inputs, [out], name=f"segment/{name}", **attrs))
        return out


def _class_onehot(nodes: _Nodes, classes: str, num_classes: int) -> str:
    """float [N, C, 1, 1]: 1 at each row's class."""
    all_classes = nodes.const("class_ids", np.arange(num_classes, dtype=np.int64).reshape(1, -1, 1, 1))
    column = nodes.add("Reshape", [classes, nodes.const("shape_n111", np.array([-1, 1, 1, 1], np.int64))], "class_col")
    return nodes.add("Cast", [nodes.add("Equal", [column, all_classes], "onehot_bool")], "onehot", to=TensorProto.FLOAT)


def _target_and_region(nodes: _Nodes, logits: str, segmenter: Segmenter) -> tuple[str, str]:
    """(target_used [N], region_weights [N, H', W']) from the `target` and `region` inputs and the class scores."""
    num_classes = segmenter.num_classes
    (height, width), (out_h, out_w) = segmenter.input_size, segmenter.output_size
    predicted = nodes.add("ArgMax", [logits], "predicted", axis=1, keepdims=0, select_last_index=0)  # [N, H', W']
    all_classes = nodes.const("class_ids", np.arange(num_classes, dtype=np.int64).reshape(1, -1, 1, 1))
    axis1 = nodes.const("axis1", np.array([1], np.int64))
    hits = nodes.add("Cast", [nodes.add("Equal", [nodes.add("Unsqueeze", [predicted, axis1], "predicted_4d"),
                                                  all_classes], "predicted_onehot_bool")],
                     "predicted_onehot", to=TensorProto.FLOAT)
    areas = nodes.add("ReduceSum", [hits, nodes.const("axes23", np.array([2, 3], np.int64))], "class_areas", keepdims=0)
    largest = nodes.add("ArgMax", [areas], "largest_class", axis=1, keepdims=0, select_last_index=0)
    use_largest = nodes.add("Less", [TARGET, nodes.const("zero_i64", np.array(0, np.int64))], "use_largest")
    target_used = nodes.add("Where", [use_largest, largest, TARGET], TARGET_USED)

    row_class = nodes.add("Reshape", [target_used, nodes.const("shape_n11", np.array([-1, 1, 1], np.int64))], "row_class")
    predicted_mask = nodes.add("Cast", [nodes.add("Equal", [predicted, row_class], "predicted_mask_bool")],
                               "predicted_mask", to=TensorProto.FLOAT)
    pooled_rows = nodes.add("MatMul", [nodes.const("area_rows", area_matrix(out_h, height)), REGION], "region_rows")
    resized = nodes.add("MatMul", [pooled_rows, nodes.const("area_cols_t", area_matrix(out_w, width).T)],
                        "region_resized")
    negative = nodes.add("Cast", [nodes.add("Less", [REGION, nodes.const("zero_f32", np.array(0, np.float32))],
                                            "negative_bool")], "negative", to=TensorProto.FLOAT)
    negatives = nodes.add("ReduceSum", [negative, nodes.const("axes12", np.array([1, 2], np.int64))],
                          "negative_count", keepdims=1)
    use_predicted = nodes.add("Greater", [negatives, nodes.const("zero_count", np.array(0, np.float32))],
                              "use_predicted")
    region_weights = nodes.add("Where", [use_predicted, predicted_mask, resized], REGION_WEIGHTS)
    return target_used, region_weights


def build_segmentation_explain(segmenter: Segmenter, layer: Layer) -> onnx.ModelProto:
    """Inputs `input`, `target` [N], `region` [N, H, W]; outputs logits [N, C, H', W'], activations, gradients (of S),
    target_used [N] and region_weights [N, H', W']."""
    model, logits, target = _standard_names(segmenter, layer.name, SEGMENTATION_RESERVED)
    if target == INPUT:
        raise LayerError("the target layer cannot be the image input itself; pick a feature map")
    graph = model.graph
    height, width = segmenter.input_size
    graph.input.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, [BATCH_DIM]))
    graph.input.append(helper.make_tensor_value_info(REGION, TensorProto.FLOAT, [BATCH_DIM, height, width]))
    nodes = _Nodes(graph)
    target_used, region_weights = _target_and_region(nodes, logits, segmenter)
    onehot = _class_onehot(nodes, target_used, segmenter.num_classes)
    weights_4d = nodes.add("Unsqueeze", [region_weights, nodes.const("seed_axis", np.array([1], np.int64))],
                           "region_weights_4d")
    seed = nodes.add("Mul", [onehot, weights_4d], "seed")
    from .autodiff import differentiate

    model = differentiate(model, wrt=target, of=logits, seed=seed, grad_name=TARGET_GRADIENT)
    activations, gradients = target_maps(model, target, layer)
    k, h, w = layer.shape[1:]
    out_h, out_w = segmenter.output_size
    outputs = [
        (logits, LOGITS, TensorProto.FLOAT, [BATCH_DIM, segmenter.num_classes, out_h, out_w]),
        (activations, ACTIVATIONS, TensorProto.FLOAT, [BATCH_DIM, k, h, w]),
        (gradients, GRADIENTS, TensorProto.FLOAT, [BATCH_DIM, k, h, w]),
        (TARGET_USED, TARGET_USED, TensorProto.INT64, [BATCH_DIM]),
        (REGION_WEIGHTS, REGION_WEIGHTS, TensorProto.FLOAT, [BATCH_DIM, out_h, out_w]),
    ]
    _set_outputs(model, outputs)
    prune_to_outputs(model, [name for _, name, _, _ in outputs])
    return model


def build_segmentation_scorer(segmenter: Segmenter) -> onnx.ModelProto:
    """Inputs `input`, `target` [N] (class per row), `region_weights` [N, H', W']; output `score` [N], the region
    probability P of each row."""
    model, logits, _ = _standard_names(segmenter, None, SEGMENTATION_RESERVED)
    graph = model.graph
    out_h, out_w = segmenter.output_size
    graph.input.append(helper.make_tensor_value_info(TARGET, TensorProto.INT64, [BATCH_DIM]))
    graph.input.append(helper.make_tensor_value_info(REGION_WEIGHTS, TensorProto.FLOAT, [BATCH_DIM, out_h, out_w]))
    nodes = _Nodes(graph)
    probabilities = nodes.add("Softmax", [logits], "probabilities", axis=1)
    onehot = _class_onehot(nodes, TARGET, segmenter.num_classes)
    class_probability = nodes.add("ReduceSum", [nodes.add("Mul", [probabilities, onehot], "class_only"),
                                                nodes.const("class_axis", np.array([1], np.int64))],
                                  "class_probability", keepdims=0)  # [N, H', W']
    axes = nodes.const("pixel_axes", np.array([1, 2], np.int64))
    weighted = nodes.add("ReduceSum", [nodes.add("Mul", [class_probability, REGION_WEIGHTS], "weighted_pixels"), axes],
                         "weighted_sum", keepdims=0)
    area = nodes.add("Max", [nodes.add("ReduceSum", [REGION_WEIGHTS, axes], "region_area", keepdims=0),
                             nodes.const("area_floor", np.array(EMPTY_REGION_FLOOR, np.float32))], "region_area_floor")
    nodes.add("Div", [weighted, area], SCORE)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, [BATCH_DIM]))
    prune_to_outputs(model, [SCORE])
    return model
