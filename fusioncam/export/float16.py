"""`float16_scorer`: the scorer graph with float16 weights, input `input` and output `logits`.

Every float32 initializer, Constant / ConstantOfShape tensor and Cast-to-float becomes float16, and so does
every float type of the graph's inputs, outputs and value_info. The few inputs ONNX requires in float32
whatever the data type (Resize's roi and scales, Upsample's scales) stay float32: a constant used only there
is left unconverted, and any other tensor reaching one gets a Cast to float32 in front of it. A float Range
(YOLO-style anchor grids: torch.arange in float) stays float32 as a whole, since ONNX defines Range for no 16-bit
float type: its inputs are float32 (constants left so, computed ones cast) and its output is cast to float16 for
the float16 ops that read it. ONNX Runtime runs ops it has no float16 kernel for on its own float32 kernels (it
inserts the casts itself).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT32_ONLY_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}  # op type -> input positions that stay float32
RANGE_INPUTS = (0, 1, 2)  # a float Range's start, limit and delta: float32 (ONNX's Range has no float16)
FLOAT16_MAX = float(np.finfo(np.float16).max)


def _half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A float32 tensor as float16 (same name), values clipped to float16's range rather than becoming inf."""
    array = np.clip(numpy_helper.to_array(tensor), -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    return numpy_helper.from_array(array, tensor.name)


def _float32_positions(node: onnx.NodeProto, float_ranges: set[str]) -> tuple[int, ...]:
    """The input positions of `node` that must stay float32."""
    if node.op_type == "Range" and node.output[0] in float_ranges:
        return RANGE_INPUTS
    return FLOAT32_ONLY_INPUTS.get(node.op_type, ())


def _float_range_outputs(model: onnx.ModelProto) -> set[str]:
    """Outputs of the Range nodes that compute float32 values (found by ONNX shape inference of the float32 graph)."""
    ranges = [node.output[0] for node in model.graph.node if node.op_type == "Range"]
    if not ranges:
        return set()
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {value.name: value.type.tensor_type.elem_type
             for value in (*inferred.input, *inferred.output, *inferred.value_info)}
    return {name for name in ranges if types.get(name) == TensorProto.FLOAT}


def _float32_only_uses(graph: onnx.GraphProto, float_ranges: set[str]) -> tuple[set[str], set[str]]:
    """(tensors read at a float32-only input, tensors read anywhere else)."""
    pinned, other = set(), set()
    for node in graph.node:
        positions = _float32_positions(node, float_ranges)
        for position, name in enumerate(node.input):
            if name:
                (pinned if position in positions else other).add(name)
    for output in graph.output:
        other.add(output.name)
    return pinned, other


def _convert_graph(graph: onnx.GraphProto, float_ranges: set[str] = frozenset()) -> None:
    """Convert one graph in place (subgraphs of If/Loop/Scan too)."""
    pinned, other = _float32_only_uses(graph, float_ranges)
    keep = pinned - other  # constants that only feed float32-only inputs stay float32
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in keep:
            graph.initializer[index].CopyFrom(_half(tensor))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _convert_graph(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _convert_graph(subgraph)
        if node.op_type in ("Constant", "ConstantOfShape") and not (set(node.output) & keep):
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
                    attribute.t.CopyFrom(_half(attribute.t))
        if node.op_type == "Cast" and not (set(node.output) & keep):
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name not in keep and value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    _cast_float32_only_inputs(graph, keep, float_ranges)


def _cast_float32_only_inputs(graph: onnx.GraphProto, keep: set[str], float_ranges: set[str]) -> None:
    """A Cast to float32 in front of each float32-only input that is now computed in float16, and a Cast to float16
    after each float Range (which computes in float32)."""
    nodes = []
    for node in graph.node:
        for position in _float32_positions(node, float_ranges):
            if position < len(node.input) and node.input[position] and node.input[position] not in keep:
                source = node.input[position]
                cast = f"{source}/float32_for_{node.name or node.op_type}_{position}"
                nodes.append(helper.make_node("Cast", [source], [cast], to=TensorProto.FLOAT, name=cast))
                node.input[position] = cast
        nodes.append(node)
        if node.op_type == "Range" and node.output[0] in float_ranges:
            result = node.output[0]
            node.output[0] = f"{result}/float32"
            nodes.append(helper.make_node("Cast", [node.output[0]], [result], to=TensorProto.FLOAT16,
                                          name=f"{result}/float16"))
    del graph.node[:]
    graph.node.extend(nodes)


def float16_scorer(scorer: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of the scorer graph (input `input` and output `logits` float16); the original is untouched."""
    model = onnx.ModelProto()
    model.CopyFrom(scorer)
    _convert_graph(model.graph, _float_range_outputs(model))
    onnx.checker.check_model(model)
    return model
