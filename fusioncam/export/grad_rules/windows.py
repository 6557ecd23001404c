"""Sliding-window geometry shared by Conv and the pools: explicit pads, and scattering windows back."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_label


@dataclass(frozen=True)
class Window:
    """Static geometry of a windowed op over spatial axes 2.. of a [N, C, *spatial] input."""

    in_sizes: list[int] | None  # None: spatial sizes known only at run time (explicit pads only)
    out_sizes: list[int] | None
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads_begin: list[int]
    pads_end: list[int]

    def span(self, axis: int) -> int:
        """Extent of the dilated kernel along spatial `axis`."""
        return (self.kernel[axis] - 1) * self.dilations[axis] + 1


def window_of(ctx: GradContext, node: onnx.NodeProto, kernel: list[int], dynamic_ok: bool = False) -> Window:
    """Read strides/dilations/pads of `node` (turning auto_pad into explicit, maybe asymmetric, pads).

    With `dynamic_ok`, explicit-pad windows over spatial sizes unknown at export time are allowed.
    """
    x = node.input[0]
    n = len(kernel)
    spatial = list(range(2, 2 + n))
    dims = ctx.maybe_shape(x)
    static = dims is not None and all(isinstance(dims[a], int) for a in spatial)
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    if not static and not (dynamic_ok and auto_pad in ("NOTSET", "VALID")):
        ctx.static_shape(x, node, spatial)  # raises, naming the node and the axes
    in_sizes = [dims[a] for a in spatial] if static else None
    strides = list(attribute(node, "strides", [1] * n))
    dilations = list(attribute(node, "dilations", [1] * n))
    pads = list(attribute(node, "pads", [0] * 2 * n))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * 2 * n
        for a in range(n):
            span = (kernel[a] - 1) * dilations[a] + 1
            total = max(0, (-(-in_sizes[a] // strides[a]) - 1) * strides[a] + span - in_sizes[a])
            small, large = total // 2, total - total // 2
            pads[a], pads[n + a] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        pads = [0] * 2 * n
    elif auto_pad != "NOTSET":
        raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): unknown auto_pad {auto_pad!r}")
    ceil_mode = bool(attribute(node, "ceil_mode", 0)) and auto_pad == "NOTSET"
    if in_sizes is None:
        return Window(None, None, list(kernel), strides, dilations, pads[:n], pads[n:])
    out_sizes = [_out_size(in_sizes[a], (kernel[a] - 1) * dilations[a] + 1, strides[a], pads[a], pads[n + a],
                           ceil_mode) for a in range(n)]
    return Window(in_sizes, out_sizes, list(kernel), strides, dilations, pads[:n], pads[n:])


def _out_size(size: int, span: int, stride: int, pad_begin: int, pad_end: int, ceil_mode: bool) -> int:
    """Output length of a sliding window, as ONNX Runtime and PyTorch compute it.

    In ceil mode the last window must start inside the input or the begin padding; ONNX shape inference
    skips that rule, so the inferred output size can be one too large and is not used here.
    """
    room = size + pad_begin + pad_end - span
    out = (-(-room // stride) if ceil_mode else room // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def crop_to_input(ctx: GradContext, full: str, window: Window, x: str) -> str:
    """Map a zero-pad ConvTranspose result (padded-input coordinates) back onto the exact size of input `x`.

    Slices off the begin pads and whatever lies past the input, and zero-pads the input's tail that no
    window reached (the rows a floor-mode stride skips).
    """
    n = len(window.kernel)
    axes = list(range(2, 2 + n))
    if window.in_sizes is None:
        return _crop_at_run_time(ctx, full, window, x)
    starts, ends, tail = [], [], []
    for a in range(n):
        full_size = window.strides[a] * (window.out_sizes[a] - 1) + window.span(a)
        start = window.pads_begin[a]
        end = min(start + window.in_sizes[a], full_size)
        starts.append(start)
        ends.append(max(end, start))
        tail.append(window.in_sizes[a] - max(end - start, 0))
    cropped = ctx.node("Slice", [full, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes)])
    if not any(tail):
        return cropped
    return ctx.node("Pad", [cropped, ctx.ints([0, 0] + [0] * n + [0, 0] + tail)])


def _crop_at_run_time(ctx: GradContext, full: str, window: Window, x: str) -> str:
    """`crop_to_input` when the spatial sizes are only known at run time (same slice and tail pad)."""
    n = len(window.kernel)
    axes = ctx.ints(range(2, 2 + n))
    in_sizes = ctx.node("Gather", [ctx.shape_of(x), axes], {"axis": 0})
    begin = ctx.ints(window.pads_begin)
    cropped = ctx.node("Slice", [full, begin, ctx.node("Add", [in_sizes, begin]), axes])
    kept = ctx.node("Gather", [ctx.node("Shape", [cropped]), axes], {"axis": 0})
    tail = ctx.node("Sub", [in_sizes, kept])
    return ctx.node("Pad", [cropped, ctx.node("Concat", [ctx.ints([0] * (n + 4)), tail], {"axis": 0})])


def scatter_windows(ctx: GradContext, dy: str, weight: str, group: int, window: Window, x: str) -> str:
    """Transpose of a windowed op over input `x`: `ConvTranspose(dy, weight)` with zero pads, cropped to `x`."""
    attrs = {"group": group, "strides": window.strides, "dilations": window.dilations,
             "kernel_shape": window.kernel, "pads": [0] * 2 * len(window.kernel)}
    return crop_to_input(ctx, ctx.node("ConvTranspose", [dy, weight], attrs), window, x)
