"""Recognise INT8 graphs from ONNX Runtime's quantizer and give their integer feature maps float views.

`quantization_facts` says which quantization a model carries (QDQ: QuantizeLinear/DequantizeLinear pairs around float
ops; QOperator: QLinearConv and friends; dynamic: DynamicQuantizeLinear with ConvInteger/MatMulInteger) and which
ops; the manifest records it. `add_dequantized_views` makes each QOperator feature map a target fusioncam can take:
after the integer output q of a QLinear op it inserts DequantizeLinear -> QuantizeLinear with q's own scale and zero
point, so `q/dequantized` is the float map (activations) on the path to the logits. QuantizeLinear(DequantizeLinear(q))
gives q back exactly (|q - zp| <= 255, so (q - zp) * s / s rounds to q - zp), so the integer graph computes the same
values; the pair's straight-through gradient is the identity there (a dequantized value is always in range).
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import helper

from .grad_rules.quantization import MEASURED_RANGE, QUANTIZATION_OPS

# QOperator ops whose integer output is a feature map: op type -> (output scale, output zero point) input positions
STRAIGHT_THROUGH = ("straight-through: through QuantizeLinear where the value lies in the representable range, 0 "
                    "where it saturates; QOperator ops through their dequantized float32 equivalents")
VIEWED_OUTPUTS = {"QLinearConv": (6, 7), "QLinearAdd": (6, 7), "QLinearMul": (6, 7)}
VIEW_SUFFIX, REQUANTIZED_SUFFIX = "/dequantized", "/requantized"


def quantization_facts(model: onnx.ModelProto) -> dict | None:
    """{'format': 'QDQ' | 'QOperator' | 'dynamic', 'ops': {op type: count}} for a quantized model, else None."""
    ops = Counter(node.op_type for node in model.graph.node if node.op_type in QUANTIZATION_OPS
                  and not node.name.endswith((VIEW_SUFFIX, REQUANTIZED_SUFFIX)))
    measured = sum(1 for node in model.graph.node if node.name.startswith(MEASURED_RANGE)
                   and node.op_type == "QuantizeLinear")
    if measured or any(node.name.startswith(MEASURED_RANGE) for node in model.graph.node):
        return {"format": "dynamic", "ops": dict(sorted(ops.items())), "gradient": STRAIGHT_THROUGH,
                "ranges": "one per image (DynamicQuantizeLinear's range measured on each image alone, as the shipped "
                          "graph does for a batch of one); ConvInteger/MatMulInteger as float32 sums of the same "
                          "integers; the measured ranges are constants for the gradient"}
    if not ops:
        return None
    if ops.get("DynamicQuantizeLinear"):
        kind = "dynamic"
    elif any(op in ops for op in QUANTIZATION_OPS if op not in ("QuantizeLinear", "DequantizeLinear")):
        kind = "QOperator"
    else:
        kind = "QDQ"
    return {"format": kind, "ops": dict(sorted(ops.items())), "gradient": STRAIGHT_THROUGH}


def add_dequantized_views(model: onnx.ModelProto) -> list[str]:
    """Insert DequantizeLinear -> QuantizeLinear after each QOperator feature map (in place); return the views' names."""
    graph = model.graph
    taken = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    nodes, views = [], []
    for node in graph.node:
        nodes.append(node)
        positions = VIEWED_OUTPUTS.get(node.op_type)
        if positions is None or len(node.input) <= positions[1] or not node.output[0]:
            continue
        q = node.output[0]
        view, requantized = q + VIEW_SUFFIX, q + REQUANTIZED_SUFFIX
        if view in taken or requantized in taken:
            continue
        scale, zero_point = node.input[positions[0]], node.input[positions[1]]
        for consumer in graph.node:
            for index, name in enumerate(consumer.input):
                if name == q:
                    consumer.input[index] = requantized
        nodes.append(helper.make_node("DequantizeLinear", [q, scale, zero_point], [view], name=view))
        nodes.append(helper.make_node("QuantizeLinear", [view, scale, zero_point], [requantized], name=requantized))
        views.append(view)
    del graph.node[:]
    graph.node.extend(nodes)
    return views
