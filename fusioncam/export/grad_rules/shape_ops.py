"""Gradients of data-movement ops: reshapes, Transpose, Expand, Concat/Split, Slice, Pad, Gather, casts."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from fusioncam.errors import UnsupportedOpError
from fusioncam.export.grad_context import FLOAT_ELEMS, INT64_MAX, GradContext, attribute, node_input, node_label
from fusioncam.export.grad_rules.registry import grad_rule


@grad_rule("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def reshape(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = Reshape(dy, Shape(X)): same elements, the input's layout."""
    return {0: ctx.reshape_like(dys[0], node.input[0])}


@grad_rule("Identity")
def identity(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = dy."""
    return {0: dys[0]}


@grad_rule("Dropout")
def dropout(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Inference Dropout is the identity; a training-mode one cannot be differentiated here."""
    mode = node_input(node, 2)
    if mode:
        value = ctx.constant_value(mode)
        if value is None or bool(value.reshape(-1)[0]):
            raise UnsupportedOpError(f"node {node_label(node)} (Dropout): training_mode is not a constant false")
    return {0: dys[0]}


@grad_rule("Cast")
def cast(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Float-to-float Cast: cast dy back to the input's float type. From an integer tensor of a quantized graph (on
    the path only when it holds quantized values, e.g. ConvInteger's int32 sums): dy in float32, per integer unit."""
    elem = ctx.elem_type(node.input[0])
    if elem is None:
        raise UnsupportedOpError(f"node {node_label(node)} (Cast): the input's element type is unknown")
    return {0: ctx.node("Cast", [dys[0]], {"to": elem if elem in FLOAT_ELEMS else TensorProto.FLOAT})}


@grad_rule("Transpose")
def transpose(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = Transpose(dy, inverse permutation)."""
    perm = attribute(node, "perm", None)
    if perm is None:
        perm = list(range(len(ctx.shape(node.input[0], node))))[::-1]
    return {0: ctx.transpose(dys[0], [int(i) for i in np.argsort(perm)])}


@grad_rule("Expand")
def expand(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = dy summed over the broadcast axes."""
    return {0: ctx.sum_to_shape(dys[0], ctx.shape(node.output[0], node), node.input[0], node)}


def _axis_size(ctx: GradContext, node: onnx.NodeProto, name: str, axis: int) -> int | str:
    """Size of `name` along `axis`: an int when static, else a run-time int64 [1] tensor."""
    dims = ctx.maybe_shape(name)
    if dims is not None and isinstance(dims[axis], int):
        return dims[axis]
    return ctx.node("Gather", [ctx.shape_of(name), ctx.ints([axis])], {"axis": 0})


def _as_tensor(ctx: GradContext, value: int | str) -> str:
    """An int64 [1] tensor for a static int or a run-time tensor."""
    return ctx.ints([value]) if isinstance(value, int) else value


def _plus(ctx: GradContext, a: int | str, b: int | str) -> int | str:
    """a + b for sizes that are static ints or run-time tensors."""
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return ctx.node("Add", [_as_tensor(ctx, a), _as_tensor(ctx, b)])


@grad_rule("Concat", inputs=None)
def concat(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Each input gets its slab of dy along the concat axis."""
    axis = attribute(node, "axis")
    grads, start = {}, 0
    for i, name in enumerate(node.input):
        end = _plus(ctx, start, _axis_size(ctx, node, name, axis))
        if i in needs:
            grads[i] = ctx.node("Slice", [dys[0], _as_tensor(ctx, start), _as_tensor(ctx, end), ctx.ints([axis])])
        start = end
    return grads


@grad_rule("Split", outputs=None)
def split(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """dX = Concat of the outputs' gradients along the split axis (zeros for unused outputs)."""
    axis = attribute(node, "axis", 0)
    parts = [dy if dy is not None else ctx.zeros_like(out) for dy, out in zip(dys, node.output)]
    return {0: ctx.node("Concat", parts, {"axis": axis})}


def _static_slice_pads(ctx: GradContext, node: onnx.NodeProto) -> list[int] | None:
    """Pad amounts undoing a unit-step Slice with constant bounds on static axes, else None."""
    dims = ctx.shape(node.input[0], node)
    values = [ctx.constant_value(node_input(node, i)) if node_input(node, i) else None for i in range(1, 5)]
    starts, ends, axes, steps = values
    if starts is None or ends is None or (node_input(node, 3) and axes is None) \
            or (node_input(node, 4) and steps is None):
        return None
    axes = list(range(len(starts))) if axes is None else [int(a) % len(dims) for a in axes]
    if steps is not None and any(int(s) != 1 for s in steps):
        return None
    pads = [0] * (2 * len(dims))
    for axis, start, end in zip(axes, starts, ends):
        size = dims[axis]
        if not isinstance(size, int):
            return None
        start = min(max(int(start) + size if start < 0 else int(start), 0), size)
        end = min(max(int(end) + size if end < 0 else int(end), 0), size)
        pads[axis], pads[len(dims) + axis] = start, size - max(start, end)
    return pads


@grad_rule("Slice")
def slice_(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Zero-pad dy back when bounds are static and steps 1; otherwise scatter it to the replayed indices."""
    pads = _static_slice_pads(ctx, node)
    if pads is not None:
        return {0: ctx.node("Pad", [dys[0], ctx.ints(pads)]) if any(pads) else dys[0]}
    return {0: ctx.scatter_add(ctx.replay_indices(node), dys[0], node.input[0])}


@grad_rule("Gather", "GatherElements", "GatherND", "Tile")
def gather(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Scatter-add dy to the positions each output copies (repeated indices and tiles accumulate)."""
    return {0: ctx.scatter_add(ctx.replay_indices(node), dys[0], node.input[0])}


def _constant_pads(ctx: GradContext, node: onnx.NodeProto, rank: int) -> list[int] | None:
    """Full [begin..., end...] pads of a Pad node over all axes (mapping opset-18 `axes`); None if not constant."""
    pads = ctx.constant_value(node_input(node, 1))
    axes_name = node_input(node, 3)
    axes = ctx.constant_value(axes_name) if axes_name else np.arange(rank)
    if pads is None or axes is None:
        return None
    pads = [int(p) for p in pads.reshape(-1)]
    full = [0] * (2 * rank)
    for i, axis in enumerate(int(a) % rank for a in axes.reshape(-1)):
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    return full


def _unpad_static(ctx: GradContext, dy: str, pads: list[int]) -> str:
    """Undo constant padding known at export time: slice off positive pads, zero-fill negative ones."""
    rank = len(pads) // 2
    starts = [max(p, 0) for p in pads[:rank]]
    ends = [-p if p > 0 else INT64_MAX for p in pads[rank:]]
    grad = dy
    if any(p > 0 for p in pads):
        grad = ctx.node("Slice", [dy, ctx.ints(starts), ctx.ints(ends), ctx.ints(range(rank))])
    if any(p < 0 for p in pads):
        grad = ctx.node("Pad", [grad, ctx.ints([max(-p, 0) for p in pads])])
    return grad


def _unpad_runtime(ctx: GradContext, node: onnx.NodeProto, dy: str) -> str:
    """Undo constant padding whose amounts are only known at run time (same slicing, built from the pads)."""
    pads, axes = node.input[1], node_input(node, 3)
    pads_dims = ctx.maybe_shape(pads)
    if pads_dims and isinstance(pads_dims[0], int):
        count = pads_dims[0] // 2
    elif not axes:
        count = len(ctx.shape(node.input[0], node))
    else:
        raise UnsupportedOpError(f"node {node_label(node)} (Pad): the number of padded axes is unknown at export time")
    begin = ctx.node("Slice", [pads, ctx.ints([0]), ctx.ints([count])])
    end = ctx.node("Slice", [pads, ctx.ints([count]), ctx.ints([2 * count])])
    zero = ctx.ints([0])
    starts = ctx.node("Max", [begin, zero])
    ends = ctx.node("Where", [ctx.node("Greater", [end, zero]), ctx.node("Neg", [end]), ctx.ints([INT64_MAX])])
    axes_tensor = axes or ctx.ints(range(count))
    sliced = ctx.node("Slice", [dy, starts, ends, axes_tensor])
    refill = ctx.node("Max", [ctx.node("Neg", [pads]), zero])
    return ctx.node("Pad", [sliced, refill, "", axes] if axes else [sliced, refill])


@grad_rule("Pad")
def pad(ctx: GradContext, node: onnx.NodeProto, dys: list, needs: frozenset) -> dict:
    """Constant mode: slice the padding off dy (zero-fill where pads were negative crops).

    Reflect/edge/wrap: scatter-add dy onto the input elements each output copies (replayed indices).
    """
    x, dy = node.input[0], dys[0]
    if attribute(node, "mode", "constant") != "constant":
        return {0: ctx.scatter_add(ctx.replay_indices(node, drop=(2,)), dy, x)}
    dims = ctx.maybe_shape(x)
    pads = _constant_pads(ctx, node, len(dims)) if dims is not None else None
    return {0: _unpad_static(ctx, dy, pads) if pads is not None else _unpad_runtime(ctx, node, dy)}
