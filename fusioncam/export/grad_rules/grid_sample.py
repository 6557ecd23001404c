"""Gradient of GridSample (bilinear, zero padding, 4-D) with respect to both the image and the sampling grid.

Deformable attention (RT-DETR's decoder, Deformable DETR) samples its value maps with `F.grid_sample`, at locations
computed from the queries, so an explained score depends on the sampled map through the values and through the
grid. With the grid (x, y) in [-1, 1] mapped to pixel coordinates `ix = ((x + 1) W - 1) / 2` (align_corners=0) or
`(x + 1) (W - 1) / 2` (align_corners=1), and likewise `iy`, each output is the bilinear mix of the four corners
around (iy, ix), a corner outside the image counting as 0:

    out = wy0 (wx0 X00 + wx1 X01) + wy1 (wx0 X10 + wx1 X11),   wx1 = ix - floor(ix), wx0 = 1 - wx1 (same for y)

so dX is a bilinear scatter (each corner gets dY x its weight: ScatterElements with reduction add), and
d out / d ix = wy0 (X01 - X00) + wy1 (X11 - X10), d out / d iy = wx0 (X10 - X00) + wx1 (X11 - X01), summed over
channels against dY and scaled by d ix / d x (W / 2 or (W - 1) / 2), as torch's grid_sampler_2d_backward does.
"""

from __future__ import annotations

import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_label
from fusioncam.export.grad_rules.registry import grad_rule


def _check_supported(ctx: GradContext, node: onnx.NodeProto) -> bool:
    """align_corners, or UnsupportedOpError for the variants without a rule."""
    mode = attribute(node, "mode", "linear")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    padding = attribute(node, "padding_mode", "zeros")
    padding = padding.decode() if isinstance(padding, bytes) else padding
    rank = len(ctx.shape(node.input[0], node))
    if mode not in ("linear", "bilinear") or padding != "zeros" or rank != 4:
        raise UnsupportedOpError(f"node {node_label(node)} (GridSample): only bilinear sampling of a 4-D tensor "
                                 f"with zero padding has a gradient rule; got mode '{mode}', padding_mode "
                                 f"'{padding}', rank {rank}")
    return bool(attribute(node, "align_corners", 0))


@grad_rule("GridSample", inputs=(0, 1))
def grid_sample(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX by a bilinear scatter of dY, dgrid from the corner differences (see the module docstring)."""
    align = _check_supported(ctx, node)
    x, grid = node.input[0], node.input[1]
    _, _, height, width = ctx.static_shape(x, node, [2, 3])
    dy = dys[0]
    like = grid

    def scalar(value: float) -> str:
        return ctx.scalar(value, like)

    def half(name: str) -> str:
        return ctx.node("Squeeze", [ctx.node("Slice", [grid, ctx.ints([name == "y"]), ctx.ints([1 + (name == "y")]),
                                                        ctx.ints([3])]), ctx.ints([3])])  # [N, Ho, Wo]

    def pixel(coordinate: str, size: int) -> str:
        shifted = ctx.node("Add", [coordinate, scalar(1.0)])
        if align:
            return ctx.node("Mul", [shifted, scalar((size - 1) / 2)])
        return ctx.node("Div", [ctx.node("Sub", [ctx.node("Mul", [shifted, scalar(size)]), scalar(1.0)]), scalar(2.0)])

    ix, iy = pixel(half("x"), width), pixel(half("y"), height)
    x0, y0 = ctx.node("Floor", [ix]), ctx.node("Floor", [iy])
    wx1, wy1 = ctx.node("Sub", [ix, x0]), ctx.node("Sub", [iy, y0])
    wx0, wy0 = ctx.node("Sub", [scalar(1.0), wx1]), ctx.node("Sub", [scalar(1.0), wy1])
    x1, y1 = ctx.node("Add", [x0, scalar(1.0)]), ctx.node("Add", [y0, scalar(1.0)])

    def inside(coordinate: str, size: int) -> str:
        return ctx.node("And", [ctx.node("GreaterOrEqual", [coordinate, scalar(0.0)]),
                                ctx.node("LessOrEqual", [coordinate, scalar(size - 1)])])

    shape_x = ctx.shape_of(x)
    n_c = ctx.node("Slice", [shape_x, ctx.ints([0]), ctx.ints([2]), ctx.ints([0])])
    flat_shape = ctx.node("Concat", [n_c, ctx.ints([-1])], {"axis": 0})  # [N, C, -1]
    flat_x = ctx.node("Reshape", [x, flat_shape])  # [N, C, H*W]
    spots = ctx.node("Reshape", [dy, flat_shape])  # [N, C, Ho*Wo]
    one_channel = ctx.node("Concat", [ctx.node("Slice", [shape_x, ctx.ints([0]), ctx.ints([1]), ctx.ints([0])]),
                                      ctx.ints([1, -1])], {"axis": 0})  # [N, 1, -1]
    expanded = ctx.node("Shape", [spots])

    corners = []  # (flat index [N, C, Ho*Wo], weight·valid [N, 1, Ho*Wo], valid)
    for cy, wy in ((y0, wy0), (y1, wy1)):
        for cx, wx in ((x0, wx0), (x1, wx1)):
            valid = ctx.node("Cast", [ctx.node("And", [inside(cx, width), inside(cy, height)])],
                             {"to": ctx.elem_type(like)})
            clamped_x = ctx.node("Clip", [cx, scalar(0.0), scalar(width - 1)])
            clamped_y = ctx.node("Clip", [cy, scalar(0.0), scalar(height - 1)])
            index = ctx.node("Cast", [ctx.node("Add", [ctx.node("Mul", [clamped_y, scalar(width)]), clamped_x])],
                             {"to": onnx.TensorProto.INT64})
            index = ctx.node("Expand", [ctx.node("Reshape", [index, one_channel]), expanded])
            corners.append((index, ctx.node("Reshape", [valid, one_channel]),
                            ctx.node("Reshape", [ctx.node("Mul", [wx, wy]), one_channel])))

    grads = {}
    if 0 in needs:
        indices = ctx.node("Concat", [c[0] for c in corners], {"axis": 2})
        updates = ctx.node("Concat", [ctx.node("Mul", [spots, ctx.node("Mul", [c[1], c[2]])]) for c in corners],
                           {"axis": 2})
        zeros = ctx.node("Mul", [flat_x, scalar(0.0)])
        scattered = ctx.node("ScatterElements", [zeros, indices, updates], {"axis": 2, "reduction": "add"})
        grads[0] = ctx.node("Reshape", [scattered, shape_x])
    if 1 in needs:
        v00, v01, v10, v11 = (ctx.node("Mul", [ctx.node("GatherElements", [flat_x, c[0]], {"axis": 2}), c[1]])
                              for c in corners)

        def flat(weight: str) -> str:
            return ctx.node("Reshape", [weight, one_channel])

        d_ix = ctx.node("Add", [ctx.node("Mul", [flat(wy0), ctx.node("Sub", [v01, v00])]),
                                ctx.node("Mul", [flat(wy1), ctx.node("Sub", [v11, v10])])])
        d_iy = ctx.node("Add", [ctx.node("Mul", [flat(wx0), ctx.node("Sub", [v10, v00])]),
                                ctx.node("Mul", [flat(wx1), ctx.node("Sub", [v11, v01])])])
        scale_x = (width - 1) / 2 if align else width / 2
        scale_y = (height - 1) / 2 if align else height / 2
        out_shape = ctx.shape_of(ix)  # [N, Ho, Wo]
        parts = []
        for derivative, scale in ((d_ix, scale_x), (d_iy, scale_y)):
            summed = ctx.node("ReduceSum", [ctx.node("Mul", [spots, derivative]), ctx.ints([1])], {"keepdims": 0})
            parts.append(ctx.node("Unsqueeze", [ctx.node("Reshape", [ctx.node("Mul", [summed, scalar(scale)]),
                                                                     out_shape]), ctx.ints([3])]))
        grads[1] = ctx.node("Concat", parts, {"axis": 3})
    return grads


__all__ = ["grid_sample"]
