"""Gradients of Gemm (alpha, beta, transA, transB, C) and MatMul (batched, broadcast, 1-D operands)."""

from __future__ import annotations

import onnx

from fusioncam.export.grad_context import Dims, GradContext, attribute, node_input
from fusioncam.export.grad_rules.registry import grad_rule


@grad_rule("Gemm", inputs=(0, 1, 2))
def gemm(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Y = alpha A'B' + beta C: dA' = alpha dY B'^T, dB' = alpha A'^T dY (then undo trans), dC = beta dY."""
    a, b, dy = node.input[0], node.input[1], dys[0]
    alpha, beta = float(attribute(node, "alpha", 1.0)), float(attribute(node, "beta", 1.0))
    trans_a, trans_b = int(attribute(node, "transA", 0)), int(attribute(node, "transB", 0))
    grads = {}
    if 0 in needs:
        if trans_a:
            grads[0] = ctx.node("Gemm", [b, dy], {"alpha": alpha, "transA": trans_b, "transB": 1})
        else:
            grads[0] = ctx.node("Gemm", [dy, b], {"alpha": alpha, "transB": 1 - trans_b})
    if 1 in needs:
        if trans_b:
            grads[1] = ctx.node("Gemm", [dy, a], {"alpha": alpha, "transA": 1, "transB": trans_a})
        else:
            grads[1] = ctx.node("Gemm", [a, dy], {"alpha": alpha, "transA": 1 - trans_a})
    if 2 in needs and node_input(node, 2):
        scaled = ctx.node("Mul", [dy, ctx.scalar(beta, a)])
        grads[2] = ctx.sum_to_shape(scaled, ctx.shape(node.output[0], node), node.input[2], node)
    return grads


def _broadcast_dims(a: Dims, b: Dims) -> Dims:
    """Numpy broadcast of two batch-dim lists (None where it cannot be told at export time)."""
    rank = max(len(a), len(b))
    a, b = [1] * (rank - len(a)) + list(a), [1] * (rank - len(b)) + list(b)
    out: Dims = []
    for x, y in zip(a, b):
        if x == 1 or x == y:
            out.append(y)
        elif y == 1:
            out.append(x)
        elif isinstance(x, int) or isinstance(y, int):
            out.append(x if isinstance(x, int) else y)
        else:
            out.append(None)
    return out


def _swap_last(ctx: GradContext, x: str, rank: int) -> str:
    """Batched matrix transpose (swap the last two axes)."""
    return ctx.transpose(x, list(range(rank - 2)) + [rank - 1, rank - 2])


@grad_rule("MatMul", inputs=(0, 1))
def matmul(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dA = dY B^T and dB = A^T dY (batched), summed over broadcast batch dims; 1-D operands promoted."""
    a, b, dy = node.input[0], node.input[1], dys[0]
    a_dims, b_dims = ctx.shape(a, node), ctx.shape(b, node)
    a2, b2, dy_axes = a, b, []
    if len(a_dims) == 1:
        a2, a_dims = ctx.unsqueeze(a, [0]), [1] + a_dims
        ctx.set_shape(a2, a_dims, like=a)
        dy_axes.append(-2)
    if len(b_dims) == 1:
        b2, b_dims = ctx.unsqueeze(b, [1]), b_dims + [1]
        ctx.set_shape(b2, b_dims, like=b)
        dy_axes.append(-1)
    if dy_axes:
        dy = ctx.unsqueeze(dy, dy_axes)
    batch = _broadcast_dims(a_dims[:-2], b_dims[:-2])
    grads = {}
    if 0 in needs:
        ga = ctx.node("MatMul", [dy, _swap_last(ctx, b2, len(b_dims))])
        ga = ctx.sum_to_shape(ga, batch + a_dims[-2:], a2, node)
        grads[0] = ga if a2 == a else ctx.reshape_like(ga, a)
    if 1 in needs:
        gb = ctx.node("MatMul", [_swap_last(ctx, a2, len(a_dims)), dy])
        gb = ctx.sum_to_shape(gb, batch + b_dims[-2:], b2, node)
        grads[1] = gb if b2 == b else ctx.reshape_like(gb, b)
    return grads
