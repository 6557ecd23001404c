"""Gradients of broadcasting arithmetic (Add, Sub, Mul, Div, Sum, Pow) and unary math (Neg, Sqrt, Exp, ...)."""

from __future__ import annotations

import onnx

from fusioncam.export.grad_context import GradContext
from fusioncam.export.grad_rules.registry import grad_rule


def _to_operand(ctx: GradContext, node: onnx.NodeProto, grad: str, index: int) -> str:
    """Sum a gradient shaped like the node's output down to the shape of input `index` (undo broadcasting)."""
    return ctx.sum_to_shape(grad, ctx.shape(node.output[0], node), node.input[index], node)


@grad_rule("Add", "Sub", inputs=(0, 1))
def add_sub(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d(a +- b) = (dy, +-dy), each summed over its broadcast axes."""
    dy, grads = dys[0], {}
    if 0 in needs:
        grads[0] = _to_operand(ctx, node, dy, 0)
    if 1 in needs:
        g = ctx.node("Neg", [dy]) if node.op_type == "Sub" else dy
        grads[1] = _to_operand(ctx, node, g, 1)
    return grads


@grad_rule("Sum", inputs=None)
def variadic_sum(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d(sum of inputs) = dy for each input, summed over its broadcast axes."""
    return {i: _to_operand(ctx, node, dys[0], i) for i in needs}


@grad_rule("Mul", inputs=(0, 1))
def mul(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d(a * b) = (dy * b, dy * a); x * x gets both terms from the walk's accumulation."""
    a, b = node.input[0], node.input[1]
    grads = {}
    if 0 in needs:
        grads[0] = _to_operand(ctx, node, ctx.node("Mul", [dys[0], b]), 0)
    if 1 in needs:
        grads[1] = _to_operand(ctx, node, ctx.node("Mul", [dys[0], a]), 1)
    return grads


@grad_rule("Div", inputs=(0, 1))
def div(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d(a / b) = (dy / b, -dy * a / b^2)."""
    a, b = node.input[0], node.input[1]
    grads = {}
    if 0 in needs:
        grads[0] = _to_operand(ctx, node, ctx.node("Div", [dys[0], b]), 0)
    if 1 in needs:
        quotient = ctx.node("Div", [ctx.node("Div", [a, b]), b])
        grads[1] = _to_operand(ctx, node, ctx.node("Neg", [ctx.node("Mul", [dys[0], quotient])]), 1)
    return grads


@grad_rule("Neg")
def neg(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d(-x) = -dy."""
    return {0: ctx.node("Neg", [dys[0]])}


@grad_rule("Sqrt")
def sqrt(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d sqrt(x) = dy / (2 y)."""
    y = node.output[0]
    return {0: ctx.node("Div", [dys[0], ctx.node("Mul", [y, ctx.scalar(2.0, y)])])}


@grad_rule("Exp")
def exp(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d exp(x) = dy * y."""
    return {0: ctx.node("Mul", [dys[0], node.output[0]])}


@grad_rule("Log")
def log(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d log(x) = dy / x."""
    return {0: ctx.node("Div", [dys[0], node.input[0]])}


@grad_rule("Reciprocal")
def reciprocal(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d (1/x) = -dy * y^2."""
    y = node.output[0]
    return {0: ctx.node("Neg", [ctx.node("Mul", [dys[0], ctx.node("Mul", [y, y])])])}


@grad_rule("Abs")
def absolute(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d |x| = dy * sign(x) (0 at x == 0, like PyTorch)."""
    return {0: ctx.node("Mul", [dys[0], ctx.node("Sign", [node.input[0]])])}


@grad_rule("Pow")
def power(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d x^p = dy * p * x^(p-1), and 0 where p == 0 (PyTorch); the exponent gets no gradient."""
    x, p_name, dy = node.input[0], node.input[1], dys[0]
    p = ctx.constant_value(p_name)
    if p is not None and p.size == 1:
        value = float(p.reshape(()))
        if value == 0.0:
            local = ctx.zeros_like(node.output[0])
        elif value == 1.0:
            local = dy
        elif value == 2.0:
            local = ctx.node("Mul", [dy, ctx.node("Mul", [x, ctx.scalar(2.0, x)])])
        else:
            x_pow = ctx.node("Pow", [x, ctx.scalar(value - 1.0, x)])
            local = ctx.node("Mul", [dy, ctx.node("Mul", [x_pow, ctx.scalar(value, x)])])
    else:
        dtype_to = onnx.helper.np_dtype_to_tensor_dtype(ctx.np_dtype(x))
        p_cast = ctx.node("Cast", [p_name], {"to": dtype_to})
        x_pow = ctx.node("Pow", [x, ctx.node("Sub", [p_cast, ctx.scalar(1.0, x)])])
        slope = ctx.node("Mul", [p_cast, x_pow])
        is_zero = ctx.node("Equal", [p_cast, ctx.scalar(0.0, x)])
        slope = ctx.node("Where", [is_zero, ctx.scalar(0.0, x), slope])
        local = ctx.node("Mul", [dy, slope])
    return {0: _to_operand(ctx, node, local, 0)}



@grad_rule("Where", inputs=(1, 2))
def where(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d Where(c, a, b) = (dy where c, dy where not c), each summed over its broadcast axes."""
    cond, dy = node.input[0], dys[0]
    zero = ctx.scalar(0.0, node.output[0])
    grads = {}
    if 1 in needs:
        grads[1] = _to_operand(ctx, node, ctx.node("Where", [cond, dy, zero]), 1)
    if 2 in needs:
        grads[2] = _to_operand(ctx, node, ctx.node("Where", [cond, zero, dy]), 2)
    return grads
