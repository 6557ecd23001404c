"""Gradient of Conv with respect to its input: ConvTranspose with the same weight, cropped to size."""

from __future__ import annotations

import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_label
from fusioncam.export.grad_rules.registry import grad_rule
from fusioncam.export.grad_rules.windows import scatter_windows, window_of


@grad_rule("Conv")
def conv(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = ConvTranspose(dY, W) with group/strides/dilations, landed on X's exact spatial size."""
    weight = node.input[1]
    w_dims = ctx.shape(weight, node)
    kernel = attribute(node, "kernel_shape", None) or w_dims[2:]
    if not all(isinstance(k, int) for k in kernel):
        raise UnsupportedOpError(f"node {node_label(node)} (Conv): kernel shape of {weight!r} is not static")
    window = window_of(ctx, node, list(kernel), dynamic_ok=True)
    return {0: scatter_windows(ctx, dys[0], weight, attribute(node, "group", 1), window, node.input[0])}
