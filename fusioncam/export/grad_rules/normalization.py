"""Gradients of BatchNormalization (inference), LayerNormalization, InstanceNormalization, Softmax and LogSoftmax."""

from __future__ import annotations

import numpy as np
import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_input, node_label
from fusioncam.export.grad_rules.registry import grad_rule


@grad_rule("BatchNormalization")
def batch_norm(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Inference BN is y = x * s + b per channel with s = scale / sqrt(var + eps), so dX = dy * s."""
    if attribute(node, "training_mode", 0):
        raise UnsupportedOpError(f"node {node_label(node)} (BatchNormalization): training_mode=1 is not supported")
    x, scale, var = node.input[0], node.input[1], node.input[4]
    eps = float(attribute(node, "epsilon", 1e-5))
    rank = len(ctx.shape(x, node))
    scale_value, var_value = ctx.constant_value(scale), ctx.constant_value(var)
    if scale_value is not None and var_value is not None:
        s = scale_value.astype(np.float64) / np.sqrt(var_value.astype(np.float64) + eps)
        factor = ctx.const(s.reshape([-1] + [1] * (rank - 2)).astype(ctx.np_dtype(x)), hint="bn_factor")
    else:
        std = ctx.node("Sqrt", [ctx.node("Add", [var, ctx.scalar(eps, x)])])
        factor = ctx.node("Reshape", [ctx.node("Div", [scale, std]), ctx.ints([-1] + [1] * (rank - 2))])
    return {0: ctx.node("Mul", [dys[0], factor])}


@grad_rule("LayerNormalization")
def layer_norm(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = (g - mean(g) - xhat * mean(g * xhat)) / sigma with g = dy * scale, over the normalized axes."""
    x, dy = node.input[0], dys[0]
    axis = attribute(node, "axis", -1)
    axes = list(range(axis, 0)) if axis < 0 else list(range(axis, len(ctx.shape(x, node))))
    eps = float(attribute(node, "epsilon", 1e-5))
    g = ctx.node("Mul", [dy, node.input[1]]) if node_input(node, 1) else dy
    return {0: _normalized_input_gradient(ctx, x, g, axes, eps)}


def _normalized_input_gradient(ctx: GradContext, x: str, g: str, axes: list[int], eps: float) -> str:
    """d/dx of xhat = (x - mean) / sqrt(var + eps) over `axes`, given g = dL/dxhat: (g - mean(g) - xhat *
    mean(g * xhat)) / sigma (shared by LayerNormalization and InstanceNormalization)."""
    centered = ctx.node("Sub", [x, ctx.reduce_mean(x, axes, keepdims=True)])
    var = ctx.reduce_mean(ctx.node("Mul", [centered, centered]), axes, keepdims=True)
    inv_std = ctx.node("Reciprocal", [ctx.node("Sqrt", [ctx.node("Add", [var, ctx.scalar(eps, x)])])])
    xhat = ctx.node("Mul", [centered, inv_std])
    mean_g = ctx.reduce_mean(g, axes, keepdims=True)
    mean_gx = ctx.reduce_mean(ctx.node("Mul", [g, xhat]), axes, keepdims=True)
    inner = ctx.node("Sub", [ctx.node("Sub", [g, mean_g]), ctx.node("Mul", [xhat, mean_gx])])
    return ctx.node("Mul", [inner, inv_std])


@grad_rule("InstanceNormalization")
def instance_norm(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """y = scale_c * xhat + B_c with xhat normalised over the spatial axes of each (image, channel): the layer-norm
    gradient over those axes with g = dy * scale (GroupNorm(1) and GroupNorm export as this op)."""
    x, dy = node.input[0], dys[0]
    rank = len(ctx.shape(x, node))
    eps = float(attribute(node, "epsilon", 1e-5))
    scale = ctx.node("Reshape", [node.input[1], ctx.ints([-1] + [1] * (rank - 2))])
    return {0: _normalized_input_gradient(ctx, x, ctx.node("Mul", [dy, scale]), list(range(2, rank)), eps)}


@grad_rule("Softmax")
def softmax(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = y * (dy - sum(dy * y, axis)) (opset-13 single-axis semantics)."""
    y, dy = node.output[0], dys[0]
    axis = attribute(node, "axis", -1)
    dot = ctx.reduce_sum(ctx.node("Mul", [dy, y]), [axis], keepdims=True)
    return {0: ctx.node("Mul", [y, ctx.node("Sub", [dy, dot])])}


@grad_rule("LogSoftmax")
def log_softmax(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = dy - exp(y) * sum(dy, axis)."""
    y, dy = node.output[0], dys[0]
    axis = attribute(node, "axis", -1)
    total = ctx.reduce_sum(dy, [axis], keepdims=True)
    return {0: ctx.node("Sub", [dy, ctx.node("Mul", [ctx.node("Exp", [y]), total])])}
