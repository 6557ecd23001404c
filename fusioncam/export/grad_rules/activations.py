"""Gradients of pointwise activations, with PyTorch's choices at the kinks (masks built with `Where`)."""

from __future__ import annotations

import math

import onnx

from fusioncam.export.grad_context import GradContext, attribute, node_input
from fusioncam.export.grad_rules.registry import grad_rule


def _masked(ctx: GradContext, mask: str, grad: str) -> str:
    """`grad` where `mask` holds, 0 elsewhere."""
    return ctx.node("Where", [mask, grad, ctx.scalar(0.0, grad)])


@grad_rule("Relu")
def relu(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dy where x > 0 (relu'(0) = 0)."""
    x = node.input[0]
    return {0: _masked(ctx, ctx.node("Greater", [x, ctx.scalar(0.0, x)]), dys[0])}


@grad_rule("Clip")
def clip(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dy strictly inside (min, max), as PyTorch's clamp/relu6; missing bounds do not mask."""
    x, mask = node.input[0], None
    low, high = node_input(node, 1), node_input(node, 2)
    for bound, op in ((low, "Greater"), (high, "Less")):
        if bound:
            inside = ctx.node(op, [x, bound])
            mask = inside if mask is None else ctx.node("And", [mask, inside])
    return {0: dys[0] if mask is None else _masked(ctx, mask, dys[0])}


@grad_rule("LeakyRelu")
def leaky_relu(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dy where x > 0, alpha * dy elsewhere (alpha at x == 0, like PyTorch)."""
    x, dy = node.input[0], dys[0]
    alpha = attribute(node, "alpha", 0.01)
    scaled = ctx.node("Mul", [dy, ctx.scalar(alpha, x)])
    return {0: ctx.node("Where", [ctx.node("Greater", [x, ctx.scalar(0.0, x)]), dy, scaled])}


@grad_rule("Sigmoid")
def sigmoid(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dy * y * (1 - y)."""
    y = node.output[0]
    slope = ctx.node("Mul", [y, ctx.node("Sub", [ctx.scalar(1.0, y), y])])
    return {0: ctx.node("Mul", [dys[0], slope])}


@grad_rule("Tanh")
def tanh(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dy * (1 - y^2)."""
    y = node.output[0]
    slope = ctx.node("Sub", [ctx.scalar(1.0, y), ctx.node("Mul", [y, y])])
    return {0: ctx.node("Mul", [dys[0], slope])}


@grad_rule("HardSigmoid")
def hard_sigmoid(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """alpha * dy strictly inside the linear part (x-space bounds, so hardsigmoid'(+-3) = 0 as in PyTorch)."""
    x, dy = node.input[0], dys[0]
    alpha = float(attribute(node, "alpha", 0.2))
    beta = float(attribute(node, "beta", 0.5))
    if alpha == 0.0:
        return {0: ctx.zeros_like(x)}
    low, high = sorted((-beta / alpha, (1.0 - beta) / alpha))
    inside = ctx.node("And", [ctx.node("Greater", [x, ctx.scalar(low, x)]),
                              ctx.node("Less", [x, ctx.scalar(high, x)])])
    return {0: _masked(ctx, inside, ctx.node("Mul", [dy, ctx.scalar(alpha, x)]))}


@grad_rule("HardSwish")
def hard_swish(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """0 for x <= -3, dy * (x/3 + 1/2) for -3 < x < 3, dy for x >= 3 (PyTorch 2.x at the kinks)."""
    x, dy = node.input[0], dys[0]
    slope = ctx.node("Add", [ctx.node("Div", [x, ctx.scalar(3.0, x)]), ctx.scalar(0.5, x)])
    middle = ctx.node("Mul", [dy, slope])
    upper = ctx.node("Where", [ctx.node("Less", [x, ctx.scalar(3.0, x)]), middle, dy])
    return {0: _masked(ctx, ctx.node("Greater", [x, ctx.scalar(-3.0, x)]), upper)}


@grad_rule("Erf")
def erf(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dy * 2/sqrt(pi) * exp(-x^2)."""
    x = node.input[0]
    bump = ctx.node("Exp", [ctx.node("Neg", [ctx.node("Mul", [x, x])])])
    slope = ctx.node("Mul", [bump, ctx.scalar(2.0 / math.sqrt(math.pi), x)])
    return {0: ctx.node("Mul", [dys[0], slope])}


@grad_rule("Gelu")
def gelu(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Closed-form derivative of Gelu (opset 20), exact erf form or the tanh approximation."""
    x = node.input[0]

    def c(value: float) -> str:
        """A scalar constant in x's dtype."""
        return ctx.scalar(value, x)

    if attribute(node, "approximate", "none") == "tanh":
        k = math.sqrt(2.0 / math.pi)
        x2 = ctx.node("Mul", [x, x])
        inner = ctx.node("Mul", [ctx.node("Mul", [x, c(k)]),
                                 ctx.node("Add", [c(1.0), ctx.node("Mul", [x2, c(0.044715)])])])
        t = ctx.node("Tanh", [inner])
        d_inner = ctx.node("Mul", [c(k), ctx.node("Add", [c(1.0), ctx.node("Mul", [x2, c(3 * 0.044715)])])])
        sech2 = ctx.node("Sub", [c(1.0), ctx.node("Mul", [t, t])])
        second = ctx.node("Mul", [ctx.node("Mul", [ctx.node("Mul", [x, c(0.5)]), sech2]), d_inner])
        slope = ctx.node("Add", [ctx.node("Mul", [ctx.node("Add", [c(1.0), t]), c(0.5)]), second])
    else:
        cdf = ctx.node("Mul", [ctx.node("Add", [c(1.0), ctx.node("Erf", [ctx.node("Mul", [x, c(math.sqrt(0.5))])])]),
                               c(0.5)])
        pdf = ctx.node("Mul", [ctx.node("Exp", [ctx.node("Mul", [ctx.node("Mul", [x, x]), c(-0.5)])]),
                               c(1.0 / math.sqrt(2.0 * math.pi))])
        slope = ctx.node("Add", [cdf, ctx.node("Mul", [x, pdf])])
    return {0: ctx.node("Mul", [dys[0], slope])}
