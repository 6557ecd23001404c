"""Gradients of ReduceSum, ReduceMean, ReduceSumSquare and ReduceL2: dy broadcast back over the reduced axes."""

from __future__ import annotations

import numpy as np
import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_input, node_label
from fusioncam.export.grad_rules.registry import grad_rule


def reduced_axes(ctx: GradContext, node: onnx.NodeProto, rank: int) -> list[int] | None:
    """Sorted non-negative axes a Reduce* node reduces (attribute or constant input), None for 'no-op'."""
    axes_input = node_input(node, 1)
    if axes_input:
        value = ctx.constant_value(axes_input)
        if value is None:
            raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): axes {axes_input!r} are not a "
                                     "constant; the gradient needs them at export time")
        axes = [int(a) for a in value.reshape(-1)]
    else:
        axes = list(attribute(node, "axes", []))
    if not axes:
        if attribute(node, "noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def _element_ratio(ctx: GradContext, node: onnx.NodeProto, dims: list, axes: list[int]) -> str:
    """1 / (number of elements each mean averages), static when the reduced dims are, else at run time."""
    x = node.input[0]
    sizes = [dims[a] for a in axes]
    if all(isinstance(s, int) for s in sizes):
        return ctx.scalar(1.0 / float(np.prod(sizes)), x)
    return ctx.size_ratio(node.output[0], x)


@grad_rule("ReduceSum", "ReduceMean")
def reduce_sum_mean(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = Expand(dy (unsqueezed where keepdims=0), Shape(X)), divided by the count for the mean."""
    x, dy = node.input[0], dys[0]
    dims = ctx.shape(x, node)
    axes = reduced_axes(ctx, node, len(dims))
    if axes is None:
        return {0: dy}
    if not attribute(node, "keepdims", 1):
        dy = ctx.unsqueeze(dy, axes)
    if node.op_type == "ReduceMean":
        dy = ctx.node("Mul", [dy, _element_ratio(ctx, node, dims, axes)])
    return {0: ctx.node("Expand", [dy, ctx.shape_of(x)])}


def _broadcastable(ctx: GradContext, node: onnx.NodeProto, names: list[str]) -> tuple[list[str], list[int] | None]:
    """The tensors `names` (dy and outputs of the Reduce node) with the reduced axes put back when keepdims=0, so
    they broadcast against the input; also the reduced axes (None: nothing reduced)."""
    dims = ctx.shape(node.input[0], node)
    axes = reduced_axes(ctx, node, len(dims))
    if axes is None or attribute(node, "keepdims", 1):
        return names, axes
    return [ctx.unsqueeze(name, axes) for name in names], axes


@grad_rule("ReduceSumSquare")
def reduce_sum_square(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """y = sum x^2: dX = 2 x dy (dy broadcast over the reduced axes)."""
    x = node.input[0]
    (dy,), _axes = _broadcastable(ctx, node, [dys[0]])
    return {0: ctx.node("Mul", [ctx.node("Mul", [dy, x]), ctx.scalar(2.0, x)])}


@grad_rule("ReduceL2")
def reduce_l2(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """y = sqrt(sum x^2): dX = dy * x / y, and 0 where y = 0 (torch's convention for the norm at 0).
    ConvNeXt-V2's global response normalisation uses it."""
    x = node.input[0]
    (dy, y), _axes = _broadcastable(ctx, node, [dys[0], node.output[0]])  # y = |x| itself when nothing is reduced
    is_zero = ctx.node("Equal", [y, ctx.scalar(0.0, x)])
    ratio = ctx.node("Where", [is_zero, ctx.scalar(0.0, x), ctx.node("Div", [x, y])])
    return {0: ctx.node("Mul", [dy, ratio])}
