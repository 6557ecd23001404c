"""Dynamically quantized models (`quantize_dynamic`) with one quantization range per image.

`DynamicQuantizeLinear` measures one range over its whole input tensor, so in a batch each image's scores depend on
the other images; fusioncam runs images in batches (and Score-CAM's masked copies), so the shipped graph would give
each image scores that depend on its neighbours. `per_image_ranges` rewrites the graph to what the shipped graph
computes for a batch of one image, for every image of a batch:

- each `DynamicQuantizeLinear(x)` becomes the same range computation (min and max with 0, scale (max - min) / 255,
  zero point round(-min / scale) saturated to uint8) per image, and `QuantizeLinear` along the batch axis with them;
- `ConvInteger` / `MatMulInteger`, whose zero point must be one scalar, become `Conv` / `MatMul` on the same integers
  (q - zero point) held in float32: the sums are the int32 sums exactly while they stay below 2^24 in magnitude, and
  within float32 rounding (1e-7 relative) beyond. Their outputs, now float32, feed the same `Cast` (a no-op) and
  rescaling `Mul`.

Nodes computing the measured ranges are named under `MEASURED_RANGE`: the gradient treats the ranges as constants, as
quantization-aware training does with observed ranges (the differentiator does not walk them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .grad_rules.quantization import MEASURED_RANGE


def per_image_ranges(model: onnx.ModelProto) -> int:
    """Rewrite `model` in place (see the module docstring); return how many DynamicQuantizeLinear nodes it had."""
    graph = model.graph
    if not any(node.op_type == "DynamicQuantizeLinear" for node in graph.node):
        return 0
    constants = {init.name: init for init in graph.initializer}
    ranks = _ranks(model)
    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    zero_points: dict[str, str] = {}  # per-image zero point (uint8 [N]) of each quantized tensor
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type == "DynamicQuantizeLinear":
            count += 1
            nodes.extend(_per_image_quantize(node, ranks.get(node.input[0]), graph, zero_points, opset))
        elif node.op_type in ("ConvInteger", "MatMulInteger") and node.input[0] in zero_points:
            nodes.extend(_float_integer_op(node, zero_points, constants, ranks.get(node.input[0]), graph))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor ONNX shape inference finds."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in (*inferred.graph.value_info, *inferred.graph.input)
            if v.type.tensor_type.HasField("shape")}


def _const(graph: onnx.GraphProto, name: str, value) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _per_image_quantize(node: onnx.NodeProto, rank: int | None, graph: onnx.GraphProto,
                        zero_points: dict[str, str], opset: int) -> list[onnx.NodeProto]:
    """DynamicQuantizeLinear(x) -> (q, scale, zero point) with one range per image (batch axis 0)."""
    if rank is None or rank < 2:
        from ..errors import ModelLoadError

        raise ModelLoadError(f"DynamicQuantizeLinear node '{node.name or node.output[0]}': the rank of its input "
                             f"'{node.input[0]}' is unknown; cannot quantize it per image")
    x, (q, scale, zero_point) = node.input[0], node.output
    p = f"{MEASURED_RANGE}{node.name or q}/"
    axes = list(range(1, rank))
    reduce = ({"axes": axes}, []) if opset < 18 else ({}, [_const(graph, p + "axes", np.array(axes, np.int64))])
    zero = _const(graph, p + "zero", np.float32(0))
    shape = _const(graph, p + "shape", np.array([-1] + [1] * (rank - 1), np.int64))
    make = helper.make_node
    nodes = [
        make("ReduceMin", [x, *reduce[1]], [p + "min_raw"], keepdims=0, name=p + "min_raw", **reduce[0]),
        make("Min", [p + "min_raw", zero], [p + "min"], name=p + "min"),
        make("ReduceMax", [x, *reduce[1]], [p + "max_raw"], keepdims=0, name=p + "max_raw", **reduce[0]),
        make("Max", [p + "max_raw", zero], [p + "max"], name=p + "max"),
        make("Sub", [p + "max", p + "min"], [p + "span"], name=p + "span"),
        make("Div", [p + "span", _const(graph, p + "levels", np.float32(255))], [p + "scale"], name=p + "scale"),
        make("Div", [p + "min", p + "scale"], [p + "min_steps"], name=p + "min_steps"),
        make("Neg", [p + "min_steps"], [p + "zp_float"], name=p + "zp_float"),
        make("Clip", [p + "zp_float", zero, _const(graph, p + "qmax", np.float32(255))], [p + "zp_clipped"],
             name=p + "zp_clipped"),
        make("Round", [p + "zp_clipped"], [p + "zp_rounded"], name=p + "zp_rounded"),
        make("Cast", [p + "zp_rounded"], [p + "zero_point"], to=TensorProto.UINT8, name=p + "zero_point"),
        make("QuantizeLinear", [x, p + "scale", p + "zero_point"], [q], axis=0, name=node.name or q),
        make("Reshape", [p + "scale", shape], [scale], name=p + "scale_per_image"),  # broadcasts like the scalar did
        make("Reshape", [p + "zero_point", shape], [zero_point], name=p + "zero_point_per_image"),
    ]
    zero_points[q] = p + "zero_point"
    return nodes


def _float_integer_op(node: onnx.NodeProto, zero_points: dict[str, str], constants: dict, rank: int | None,
                      graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """ConvInteger / MatMulInteger on a per-image quantized input as Conv / MatMul of the same integers in float32."""
    from ..errors import ModelLoadError

    q, w = node.input[0], node.input[1]
    w_zp = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    if w not in constants or (w_zp and w_zp not in constants) or rank is None:
        raise ModelLoadError(f"{node.op_type} node '{node.name or node.output[0]}': its weight '{w}' is not a "
                             "constant; fusioncam quantizes dynamically quantized models per image only with "
                             "constant weights")
    p = f"integer_sums/{node.name or node.output[0]}/"
    weight = numpy_helper.to_array(constants[w]).astype(np.float32)
    if w_zp:
        zp = numpy_helper.to_array(constants[w_zp]).astype(np.float32)
        if zp.size > 1:
            zp = zp.reshape([-1] + [1] * (weight.ndim - 1)) if node.op_type == "ConvInteger" else zp.reshape(1, -1)
        weight = weight - zp
    weight_name = _const(graph, p + "weight_integers", weight)
    shape = _const(graph, p + "zp_shape", np.array([-1] + [1] * (rank - 1), np.int64))
    make = helper.make_node
    nodes = [
        make("Cast", [q], [p + "q_float"], to=TensorProto.FLOAT, name=p + "q_float"),
        make("Cast", [zero_points[q]], [p + "zp_float32"], to=TensorProto.FLOAT, name=p + "zp_float32"),
        make("Reshape", [p + "zp_float32", shape], [p + "zp_per_image"], name=p + "zp_per_image"),
        helper.make_node("Sub", [p + "q_float", p + "zp_per_image"], [p + "x_integers"], name=f"{node.name}/shift"),
    ]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = "Conv" if node.op_type == "ConvInteger" else "MatMul"
    nodes.append(make(op, [p + "x_integers", weight_name], list(node.output[:1]), name=node.name or op, **attrs))
    return nodes
