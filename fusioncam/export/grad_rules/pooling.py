"""Gradients of MaxPool (through its Indices output), AveragePool and GlobalAveragePool."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import GradContext, attribute, node_label
from fusioncam.export.grad_rules.registry import grad_rule
from fusioncam.export.grad_rules.windows import Window, scatter_windows, window_of


def _indices_output(ctx: GradContext, node: onnx.NodeProto) -> str:
    """Name of MaxPool's `Indices` output, adding it to the forward node when the model did not ask for it."""
    if len(node.output) > 1 and node.output[1]:
        return node.output[1]
    name = ctx.fresh("maxpool_indices")
    if len(node.output) > 1:
        node.output[1] = name
    else:
        node.output.append(name)
    return name


@grad_rule("MaxPool")
def max_pool(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Scatter-add dy onto the argmax of each window (ORT's `Indices`, first max on ties, like PyTorch)."""
    x = node.input[0]
    indices = ctx.node("Reshape", [_indices_output(ctx, node), ctx.ints([-1])])
    if attribute(node, "storage_order", 0) == 0:
        return {0: ctx.scatter_add(indices, dys[0], x)}
    # Column-major indices: scatter into [N, C, *reversed(spatial)], then reverse the spatial axes back.
    rank = len(ctx.shape(x, node))
    perm = [0, 1] + list(range(rank - 1, 1, -1))
    buffer_shape = ctx.node("Gather", [ctx.shape_of(x), ctx.ints(perm)], {"axis": 0})
    return {0: ctx.transpose(ctx.scatter_add(indices, dys[0], x, buffer_shape), perm)}


def _window_counts(window: Window, axis: int, include_pad: bool) -> np.ndarray:
    """Per output position along `axis`: how many kernel taps the average divides by."""
    size, low = window.in_sizes[axis], 0
    high = size
    if include_pad:
        low, high = -window.pads_begin[axis], size + window.pads_end[axis]
    counts = []
    for o in range(window.out_sizes[axis]):
        start = o * window.strides[axis] - window.pads_begin[axis]
        taps = start + window.dilations[axis] * np.arange(window.kernel[axis])
        counts.append(int(np.count_nonzero((taps >= low) & (taps < high))))
    return np.array(counts, dtype=np.float64)


@grad_rule("AveragePool")
def average_pool(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = ConvTranspose(dy / divisor, ones kernel, group=C): the divisor per output is fixed at export."""
    x, dy = node.input[0], dys[0]
    window = window_of(ctx, node, list(attribute(node, "kernel_shape")))
    channels = ctx.static_shape(x, node, [1])[1]
    include_pad = bool(attribute(node, "count_include_pad", 0))
    divisor = np.ones([1, 1], dtype=np.float64)
    for axis in range(len(window.kernel)):
        counts = _window_counts(window, axis, include_pad)
        if not counts.all():
            raise UnsupportedOpError(f"node {node_label(node)} (AveragePool): a window covers no input element")
        divisor = np.multiply.outer(divisor, counts).reshape(divisor.shape + counts.shape)
    dtype = ctx.np_dtype(x)
    scaled = ctx.node("Mul", [dy, ctx.const((1.0 / divisor).astype(dtype), hint="avgpool_inv_count")])
    window = _taps_reaching_input(window)
    kernel = ctx.const(np.ones([channels, 1, *window.kernel], dtype=dtype), hint="avgpool_ones")
    return {0: scatter_windows(ctx, scaled, kernel, channels, window, x)}


def _taps_reaching_input(window: Window) -> Window:
    """`window` with each kernel cut to the taps that can land on the input: every window starts at or after the
    begin padding, so no tap past (size - 1 + pads_begin) // dilation reaches an input element. A kernel far larger
    than the map (Hugging Face EfficientNet pools a 2x2 map with a 2560x2560 ceil-mode window) would otherwise make
    a ones kernel of [C, 1, 2560, 2560] (62.5 GiB); the divisors are counted on the full window before this."""
    kernel = [min(k, (size - 1 + begin) // d + 1)
              for k, size, begin, d in zip(window.kernel, window.in_sizes, window.pads_begin, window.dilations)]
    return window if kernel == window.kernel else replace(window, kernel=kernel)


@grad_rule("GlobalAveragePool")
def global_average_pool(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = Expand(dy / (number of spatial elements), Shape(X)); the count is static when the dims are."""
    x = node.input[0]
    dims = ctx.maybe_shape(x)
    if dims is not None and all(isinstance(d, int) for d in dims[2:]):
        ratio = ctx.scalar(1.0 / float(np.prod(dims[2:])), x)
    else:
        ratio = ctx.size_ratio(node.output[0], x)
    scaled = ctx.node("Mul", [dys[0], ratio])
    return {0: ctx.node("Expand", [scaled, ctx.shape_of(x)])}
