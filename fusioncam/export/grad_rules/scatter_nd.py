"""Gradient of ScatterND without reduction: `y = data` with `updates` written at `indices`.

The legacy exporter writes slice assignments (`t[..., :2] = v`, as Conditional DETR's reference points do) as
ScatterND. Each element of y is either an untouched element of data or one element of updates, so the data gradient
is dY with the overwritten positions zeroed (the same ScatterND writing zeros) and the updates gradient is dY read
at the written positions (GatherND). Repeated indices have no defined forward in ONNX and are not supported.
"""

from __future__ import annotations

import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_label
from fusioncam.export.grad_rules.registry import grad_rule


@grad_rule("ScatterND", inputs=(0, 2))
def scatter_nd(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """d data = dY with written positions zeroed; d updates = dY at the written positions."""
    reduction = attribute(node, "reduction", "none")
    reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
    if reduction != "none":
        raise UnsupportedOpError(f"node {node_label(node)} (ScatterND): only reduction 'none' has a gradient rule "
                                 f"(got '{reduction}')")
    indices, updates = node.input[1], node.input[2]
    grads = {}
    if 0 in needs:
        grads[0] = ctx.node("ScatterND", [dys[0], indices, ctx.zeros_like(updates)])
    if 2 in needs:
        grads[2] = ctx.node("GatherND", [dys[0], indices])
    return grads


__all__ = ["scatter_nd"]
