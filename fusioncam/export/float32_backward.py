"""The float32 copy of a float16 node that the backward graph differentiates (float16 sources: float16_source.py).

Gradients of a float16 graph are computed in float32: a node with float16 tensors is handed to its gradient rule as
a float32 copy whose float16 inputs are the forward's values upcast (a Cast, or a float32 copy of a constant) and
whose float16 outputs are the forward's outputs upcast. The copy is not run, except MaxPool's: its rule reads the
chosen positions (`Indices`), which the float32 copy computes on the upcast input (the same positions: upcasting is
exact and monotonic).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .float16_source import HALF_TYPES
from .grad_context import GradContext

RECOMPUTED = ("MaxPool",)  # ops whose float32 copy runs in the backward graph (their rule reads extra outputs)


def _upcast(ctx: GradContext, name: str) -> str:
    """`name` as float32: a float32 constant when its value is known, else a Cast node."""
    value = ctx.constant_value(name)
    if value is not None:
        out = ctx.const(value.astype(np.float32), hint="float32_weight")
    else:
        out = ctx.node("Cast", [name], {"to": TensorProto.FLOAT}, hint="float32")
    dims = ctx.maybe_shape(name)
    if dims is None and value is not None:
        dims = list(value.shape)
    if dims is not None:
        ctx.set_shape(out, dims, elem=TensorProto.FLOAT)
    return out


def float32_twin(ctx: GradContext, node: onnx.NodeProto) -> onnx.NodeProto | None:
    """The float32 copy of `node` for its gradient rule, or None when the node has no float16 tensor."""
    half = lambda name: bool(name) and ctx.elem_type(name) in HALF_TYPES  # noqa: E731
    if not any(half(name) for name in (*node.input, *node.output)):
        return None
    inputs = [_upcast(ctx, name) if half(name) else name for name in node.input]
    if node.op_type in RECOMPUTED:
        outputs = [ctx.fresh(f"float32_{node.op_type}") if name else "" for name in node.output[:1]]
        for out, name in zip(outputs, node.output):
            ctx.set_shape(out, ctx.shape(name, node), elem=TensorProto.FLOAT)
    else:
        outputs = [_upcast(ctx, name) if half(name) else name for name in node.output]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Cast" and attrs.get("to") in HALF_TYPES:
        attrs["to"] = TensorProto.FLOAT
    recomputed = node.op_type in RECOMPUTED
    twin = helper.make_node(node.op_type, inputs, outputs, name=ctx.fresh("node_float32") if recomputed else node.name,
                            domain=node.domain or None, **attrs)
    if recomputed:
        ctx.nodes.append(twin)
    return twin
