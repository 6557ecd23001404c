"""Gradient of RoiAlign (mode "avg", a fixed sampling_ratio > 0) with respect to the feature map.

Two-stage detectors (torchvision Faster R-CNN's MultiScaleRoIAlign, sampling_ratio=2) pool each box's features with
RoiAlign: every output bin averages `s x s` bilinear samples at regularly spaced points of the bin. As ONNX Runtime
and torchvision define it, a sample at (y, x) with y < -1, y > H, x < -1 or x > W counts 0; otherwise y and x are
clamped at 0, a low corner at or past the last row/column becomes the last row/column with weight 1, and the four
corners get weights hy hx, hy lx, ly hx, ly lx (ly = y - floor(y), hy = 1 - ly). The backward is the matching bilinear
scatter: each corner of each sample receives dY(bin) x its weight / (s x s) (ScatterElements with reduction add),
as torchvision's roi_align backward does. The weights are separable (a y part and an x part per sample), computed in
the graph from the boxes, which stay inputs: the boxes themselves get no gradient (as in torchvision).

The scatter runs only for the boxes whose dY is not all zero (a NonZero over each box's summed |dY|, then Gather):
an explain graph differentiates one instance's score, so of the 1000 proposals per image a two-stage detector pools,
only the explained one has a gradient, and the scatter's index and update tensors (R x C x 4 x the samples, int64
and float) would otherwise grow with every box pooled. Skipping zero rows is exact.
"""

from __future__ import annotations

import numpy as np
import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_label
from fusioncam.export.grad_rules.registry import grad_rule


def _text(value, default: str) -> str:
    value = default if value is None else value
    return value.decode() if isinstance(value, bytes) else value


@grad_rule("RoiAlign")
def roi_align(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX by the bilinear scatter of each bin's gradient over its sampling points (see the module docstring)."""
    mode = _text(attribute(node, "mode", "avg"), "avg")
    transform = _text(attribute(node, "coordinate_transformation_mode", "half_pixel"), "half_pixel")
    ratio = int(attribute(node, "sampling_ratio", 0))
    if mode != "avg" or ratio <= 0:
        raise UnsupportedOpError(f"node {node_label(node)} (RoiAlign): only mode 'avg' with a fixed sampling_ratio "
                                 f"> 0 has a gradient rule (got mode '{mode}', sampling_ratio {ratio}); torchvision's "
                                 f"MultiScaleRoIAlign uses sampling_ratio=2")
    out_h, out_w = int(attribute(node, "output_height", 1)), int(attribute(node, "output_width", 1))
    scale = float(attribute(node, "spatial_scale", 1.0))
    x, like = node.input[0], node.input[1]
    _, channels, height, width = ctx.static_shape(x, node, [1, 2, 3])
    dtype = ctx.np_dtype(x)
    # only the boxes with a gradient: Not(sum |dY| == 0) keeps NaN rows
    magnitude = ctx.reduce_sum(ctx.node("Abs", [dys[0]]), [1, 2, 3], keepdims=False)
    live = ctx.node("Not", [ctx.node("Equal", [magnitude, ctx.scalar(0.0, x)])])
    live = ctx.node("Reshape", [ctx.node("NonZero", [live]), ctx.ints([-1])])
    rois, batch, dy_live = (ctx.node("Gather", [name, live], {"axis": 0})
                            for name in (like, node.input[2], dys[0]))

    def scalar(value: float) -> str:
        return ctx.scalar(value, like)

    def column(index: int) -> str:  # [R, 1] box coordinate, in feature-map pixels
        part = ctx.node("Slice", [rois, ctx.ints([index]), ctx.ints([index + 1]), ctx.ints([1])])
        part = ctx.node("Mul", [part, scalar(scale)])
        return ctx.node("Sub", [part, scalar(0.5)]) if transform == "half_pixel" else part

    def axis(start: str, stop: str, bins: int, size: int) -> tuple:
        """Per sample along one axis [R, bins * ratio]: (low index, high index, low weight, high weight)."""
        length = ctx.node("Sub", [stop, start])
        if transform != "half_pixel":
            length = ctx.node("Max", [length, scalar(1.0)])
        steps = (np.arange(bins)[:, None] + (np.arange(ratio)[None, :] + 0.5) / ratio).reshape(1, -1) / bins
        at = ctx.node("Add", [start, ctx.node("Mul", [length, ctx.const(steps.astype(dtype), hint="roi_steps")])])
        valid = ctx.node("Cast", [ctx.node("And", [ctx.node("GreaterOrEqual", [at, scalar(-1.0)]),
                                                  ctx.node("LessOrEqual", [at, scalar(float(size))])])],
                         {"to": ctx.elem_type(like)})
        at = ctx.node("Max", [at, scalar(0.0)])
        low = ctx.node("Min", [ctx.node("Floor", [at]), scalar(size - 1.0)])
        at = ctx.node("Min", [at, scalar(size - 1.0)])  # at or past the last row: the last row, weight 1
        high = ctx.node("Min", [ctx.node("Add", [low, scalar(1.0)]), scalar(size - 1.0)])
        frac = ctx.node("Sub", [at, low])
        low_weight = ctx.node("Mul", [ctx.node("Sub", [scalar(1.0), frac]), valid])
        high_weight = ctx.node("Mul", [frac, valid])
        as_int = [ctx.node("Cast", [v], {"to": onnx.TensorProto.INT64}) for v in (low, high)]
        return as_int[0], as_int[1], low_weight, high_weight

    ys = axis(column(1), column(3), out_h, height)
    xs = axis(column(0), column(2), out_w, width)
    rows = [ctx.unsqueeze(v, [1, 3]) for v in ys]  # [R, 1, Ph, 1]
    cols = [ctx.unsqueeze(v, [1, 2]) for v in xs]  # [R, 1, 1, Pw]

    # dY [R, C, ph, pw] repeated over each bin's ratio x ratio samples: [R, C, ph * ratio, pw * ratio]
    dy = ctx.node("Reshape", [dy_live, ctx.ints([0, channels, out_h, 1, out_w, 1])])
    shape = ctx.node("Concat", [ctx.node("Slice", [ctx.shape_of(dy_live), ctx.ints([0]), ctx.ints([1]),
                                                    ctx.ints([0])]),
                                ctx.ints([channels, out_h, ratio, out_w, ratio])], {"axis": 0})
    dy = ctx.node("Expand", [dy, shape])
    dy = ctx.node("Reshape", [dy, ctx.ints([0, channels, out_h * ratio, out_w * ratio])])
    dy = ctx.node("Mul", [dy, ctx.const(np.array(1.0 / (ratio * ratio), dtype), hint="roi_count")])

    image = ctx.node("Reshape", [ctx.node("Cast", [batch], {"to": onnx.TensorProto.INT64}), ctx.ints([-1, 1, 1, 1])])
    base = ctx.node("Add", [ctx.node("Mul", [image, ctx.const(np.array(channels * height * width, np.int64))]),
                            ctx.const((np.arange(channels, dtype=np.int64) * height * width).reshape(1, -1, 1, 1),
                                      hint="roi_channels")])  # [R, C, 1, 1]
    indices, updates = [], []
    for row, row_weight in ((rows[0], rows[2]), (rows[1], rows[3])):
        for col, col_weight in ((cols[0], cols[2]), (cols[1], cols[3])):
            spot = ctx.node("Add", [ctx.node("Mul", [row, ctx.const(np.array(width, np.int64))]), col])
            index = ctx.node("Add", [base, spot])  # [R, C, Ph, Pw]
            weight = ctx.node("Mul", [row_weight, col_weight])  # [R, 1, Ph, Pw]
            update = ctx.node("Mul", [dy, weight])
            indices.append(ctx.node("Reshape", [ctx.node("Expand", [index, ctx.shape_of(update)]),
                                                ctx.ints([-1])]))
            updates.append(ctx.node("Reshape", [update, ctx.ints([-1])]))
    return {0: ctx.scatter_add(ctx.node("Concat", indices, {"axis": 0}), ctx.node("Concat", updates, {"axis": 0}), x)}


__all__ = ["roi_align"]
