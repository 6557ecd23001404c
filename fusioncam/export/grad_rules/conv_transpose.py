"""Gradient of ConvTranspose with respect to its input: a Conv with the same weight, strides, dilations and pads.

ConvTranspose is the transpose of Conv, so its own transpose is the Conv it transposes: with weight W
[C_in, C_out/group, *k] (ConvTranspose's layout, which is Conv's [M, C/group, *k] with M = C_in), the pads of the
ConvTranspose as the Conv's pads and the same strides, dilations and group, `Conv(dY, W)` has exactly X's spatial
size: the padded dY spans `stride * (in - 1) + output_padding + span`, whose `output_padding` tail no window reads.
DBNet-style detectors (PaddleOCR's DB head) upsample their probability maps with ConvTranspose.
Weight and bias get no gradient (fusioncam differentiates with respect to activations only). `output_shape` and
SAME auto-padding are refused: their implicit pads are not read here.
"""

from __future__ import annotations

import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_label
from fusioncam.export.grad_rules.registry import grad_rule


@grad_rule("ConvTranspose")
def conv_transpose(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = Conv(dY, W) with the ConvTranspose's group, strides, dilations and pads."""
    weight = node.input[1]
    w_dims = ctx.shape(weight, node)
    kernel = list(attribute(node, "kernel_shape", None) or w_dims[2:])
    if not all(isinstance(k, int) for k in kernel):
        raise UnsupportedOpError(f"node {node_label(node)} (ConvTranspose): kernel shape of {weight!r} is not static")
    n = len(kernel)
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedOpError(f"node {node_label(node)} (ConvTranspose): auto_pad {auto_pad!r} has no gradient "
                                 f"rule; export the model with explicit pads")
    if attribute(node, "output_shape", None):
        raise UnsupportedOpError(f"node {node_label(node)} (ConvTranspose): the output_shape attribute has no "
                                 f"gradient rule; export the model with explicit pads and output_padding")
    pads = [0] * 2 * n if auto_pad == "VALID" else list(attribute(node, "pads", [0] * 2 * n))
    attrs = {"group": attribute(node, "group", 1), "strides": list(attribute(node, "strides", [1] * n)),
             "dilations": list(attribute(node, "dilations", [1] * n)), "kernel_shape": kernel, "pads": pads}
    return {0: ctx.node("Conv", [dys[0], weight], attrs)}


__all__ = ["conv_transpose"]
