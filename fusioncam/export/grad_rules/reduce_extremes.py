"""Gradients of ReduceMax and ReduceMin: dy goes to the elements that are the extreme of their reduced slice.

Ties follow the torch op the graph came from. `torch.amax`/`amin` (and `max()`/`min()` over all elements) split the
gradient evenly among the tied elements. `torch.max(x, dim)`/`min(x, dim)` return values and indices, and the
exporters write them as a ReduceMax/ReduceMin plus an ArgMax/ArgMin on the same input and axis: their gradient goes
to the index returned, the first extreme along that axis. So a ReduceMax with such an ArgMax beside it (VOLO's
auxiliary head: `aux.max(1)[0]`; the dynamo exporter drops the unused ArgMax but its node metadata names
`aten.max.dim`) sends dy to the first maximum; any other splits it evenly.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from fusioncam.export.grad_context import GradContext, attribute
from fusioncam.export.grad_rules.reduce import _broadcastable
from fusioncam.export.grad_rules.registry import grad_rule
from fusioncam.export.torch_scopes import torch_origin

_INDEX_OP = {"ReduceMax": "ArgMax", "ReduceMin": "ArgMin"}
_INDEXED_ATEN_OPS = {"ReduceMax": ("aten.max.dim",), "ReduceMin": ("aten.min.dim",)}  # (values, indices) ops


def takes_first_extreme(ctx: GradContext, node: onnx.NodeProto, axes: list[int], rank: int) -> bool:
    """True when the node is a torch `max(x, dim)`/`min(x, dim)`: the dynamo exporter's metadata names that aten op,
    or an ArgMax/ArgMin (first index on ties) reads the same input along the same single axis (the TorchScript
    exporter writes the pair; the dynamo one drops an unused ArgMax)."""
    if len(axes) != 1:
        return False
    origin = torch_origin(node, wrapped=False)
    if origin is not None and origin.aten_op in _INDEXED_ATEN_OPS[node.op_type]:
        return True
    for other in ctx.graph.node:
        if (other.op_type == _INDEX_OP[node.op_type] and other.input and other.input[0] == node.input[0]
                and int(attribute(other, "axis", 0)) % rank == axes[0]
                and not attribute(other, "select_last_index", 0)):
            return True
    return False


@grad_rule("ReduceMax", "ReduceMin")
def reduce_extreme(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = dy * hit / count(hit) with hit = (X == Y) over each reduced slice (torch.amax's even split), or dy at the
    first hit along the axis when an ArgMax/ArgMin pairs with the node (torch.max(x, dim)'s index)."""
    x = node.input[0]
    rank = len(ctx.shape(x, node))
    (dy, y), axes = _broadcastable(ctx, node, [dys[0], node.output[0]])
    if axes is None:  # noop_with_empty_axes: y = x
        return {0: dy}
    hit = ctx.node("Cast", [ctx.node("Equal", [x, y])], {"to": ctx.elem_type(x) or TensorProto.FLOAT})
    if takes_first_extreme(ctx, node, axes, rank):
        # the first hit along the axis is where the running count of hits first reaches 1
        running = ctx.node("CumSum", [hit, ctx.const(axes[0], hint="axis")])
        first = ctx.node("Equal", [running, ctx.scalar(1.0, x)])
        share = ctx.node("Where", [first, hit, ctx.scalar(0.0, x)])
    else:
        share = ctx.node("Div", [hit, ctx.reduce_sum(hit, axes, keepdims=True)])
    return {0: ctx.node("Mul", [dy, share])}
