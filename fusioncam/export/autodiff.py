"""Reverse-mode differentiation of an ONNX graph, emitted as extra ONNX nodes in a copy of the model.

The walk knows no op: it finds the nodes between `wrt` and `of`, visits them in reverse topological
order, sums each tensor's incoming gradients, and asks `grad_rules` for each node's backward nodes.
"""

from __future__ import annotations

from collections import defaultdict

import onnx

from fusioncam.errors import LayerError, UnsupportedOpError
from fusioncam.export.float32_backward import float32_twin
from fusioncam.export.grad_context import GradContext, node_label
from fusioncam.export.grad_rules import rule_for, supported_ops
from fusioncam.export.grad_rules.quantization import CONSTANT_OUTPUTS, MEASURED_RANGE, carries_quantized_values
from fusioncam.export.torch_scopes import exported_from_wrapper, torch_origin

# nodes named under this prefix compute values the gradient holds fixed (torch's detach, which ONNX does not record),
# e.g. a two-stage detector's proposal boxes (export/faster_rcnn.py): their outputs are constants for the walk
HELD_FIXED = "held_fixed/"
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}


def differentiate(model: onnx.ModelProto, wrt: str, of: str, seed: str, grad_name: str,
                  also: dict[str, str] | None = None, branches: bool = True) -> onnx.ModelProto:
    """Return a copy of `model` with nodes appended that compute d(sum(of * seed)) / d(wrt) into tensor `grad_name`.

    `also` maps further tensors to names that receive their gradients from the same backward pass: tensors between
    `wrt` and `of` (FullGrad's per-layer gradients, a deeper target layer), or tensors on other branches (a feature
    pyramid's levels, each feeding the head on its own). The walk stops at every tensor no other one of them is
    computed from, and passes through the others, so each gets its total gradient; one that gets no gradient is a
    LayerError. branches=False keeps `also` to tensors between `wrt` and `of` (FullGrad: every bias layer must be
    computed from the image); the others then get no gradient."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inferred = _inferred(model)
    ctx = GradContext(out, inferred)
    graph = out.graph
    _check_names(graph, wrt, of, seed, grad_name)

    stops = {**(also or {}), wrt: grad_name}
    reach_of = {stop: _forward_reach(graph, stop, ctx) for stop in (stops if branches else [wrt])}
    if of not in reach_of[wrt]:
        raise LayerError(f"tensor {of!r} does not depend on {wrt!r} through float tensors; "
                         "pick a layer that lies between the input and the logits")
    reach = set().union(*reach_of.values())
    terminal = {stop for stop in reach_of if not any(stop in reach_of[other] for other in reach_of if other != stop)}
    needed = _ancestors(graph, of)

    grads: dict[str, list[str]] = defaultdict(list)
    grads[of].append(seed)
    on_path = [n for n in graph.node if any(o not in terminal and o in reach and o in needed for o in n.output)]
    for node in reversed(on_path):
        dys = [_total(ctx, grads.pop(name, [])) if name else None for name in node.output]
        for name, dy in zip(node.output, dys):
            if name in stops and dy is not None:  # a stop the walk passes through: its total gradient is complete
                ctx.nodes.append(onnx.helper.make_node("Identity", [dy], [stops[name]], name=ctx.fresh("node_output")))
        if any(dy is not None for dy in dys):
            _backward(ctx, node, dys, reach, grads)

    for stop in sorted(terminal, key=list(stops).index):
        total = _total(ctx, grads.pop(stop, []))
        if total is None and stop == wrt:
            raise LayerError(f"tensor {of!r} depends on {wrt!r} only through non-differentiable values "
                             "(shapes, indices, comparisons); its gradient would be zero")
        if total is not None:
            ctx.nodes.append(onnx.helper.make_node("Identity", [total], [stops[stop]], name=ctx.fresh("node_output")))
    missing = sorted(set(stops.values()) - {o for n in ctx.nodes for o in n.output})
    if missing:
        raise LayerError(f"no gradient reaches {', '.join(missing)}: those tensors do not lie between the input and "
                         f"{of!r} through float tensors")
    graph.node.extend(ctx.nodes)
    return out


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with inferred types/shapes (data propagation makes reshape targets static where it can)."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001  (data propagation fails on some graphs: fall back to plain inference)
        return onnx.shape_inference.infer_shapes(model)


def _backward(ctx: GradContext, node: onnx.NodeProto, dys: list, reach: set[str],
              grads: dict[str, list[str]]) -> None:
    """Emit one node's gradient rule and record the gradients it sends to its inputs."""
    rule = rule_for(node.op_type)
    if rule is None:
        origin = torch_origin(node, exported_from_wrapper(ctx.graph))
        source = f", from {origin.describe()}" if origin is not None else ""
        raise UnsupportedOpError(f"no gradient rule for op {node.op_type!r} (node {node_label(node)}{source}) on the "
                                 f"path to the logits; supported ops: {supported_ops()}")
    bad_outputs = [i for i, dy in enumerate(dys) if dy is not None and rule.outputs is not None
                   and i not in rule.outputs]
    if bad_outputs:
        raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): outputs {bad_outputs} feed the logits "
                                 f"but the rule only differentiates outputs {list(rule.outputs)}")
    diff = range(len(node.input)) if rule.inputs is None else rule.inputs
    needs = frozenset(i for i in diff if i < len(node.input) and node.input[i] in reach)
    blocked = [i for i, name in enumerate(node.input) if name in reach and i not in needs]
    if blocked:
        raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): inputs {blocked} depend on the target "
                                 "layer but this op's gradient is only defined for inputs "
                                 f"{list(diff)}")
    result = rule.fn(ctx, float32_twin(ctx, node) or node, dys, needs)  # float16 nodes: float32 gradients
    missing = needs - set(result)
    if missing:
        raise UnsupportedOpError(f"node {node_label(node)} ({node.op_type}): the rule gave no gradient for inputs "
                                 f"{sorted(missing)}")
    for index in needs:
        grads[node.input[index]].append(result[index])


def _total(ctx: GradContext, parts: list[str]) -> str | None:
    """The sum of a tensor's incoming gradients (None when it has none)."""
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else ctx.node("Sum", parts, hint="accumulate")


def _check_names(graph: onnx.GraphProto, wrt: str, of: str, seed: str, grad_name: str) -> None:
    """Raise LayerError when `wrt`/`of`/`seed` are not tensors of the graph or `grad_name` is taken."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    known |= {o for n in graph.node for o in n.output if o}
    for role, name in (("wrt", wrt), ("of", of), ("seed", seed)):
        if name not in known:
            raise LayerError(f"{role} tensor {name!r} is not a tensor of the graph (not an input, initializer or "
                             "node output); list node outputs to find the layer's tensor name")
    if grad_name in known or grad_name in {o.name for o in graph.output}:
        raise LayerError(f"grad_name {grad_name!r} already names a tensor of the graph; choose a new name")


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs of `node`, including outer-scope tensors its subgraphs (If/Loop/Scan bodies) read."""
    names = [name for name in node.input if name]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in sub.node:
                names.extend(_node_inputs(inner))
    return names


def _is_float(ctx: GradContext, name: str) -> bool:
    """True for float tensors, and for tensors of unknown type (so nothing is skipped silently)."""
    elem = ctx.elem_type(name)
    return elem is None or elem in FLOAT_TYPES


def _forward_reach(graph: onnx.GraphProto, wrt: str, ctx: GradContext) -> set[str]:
    """Float tensors whose value depends on `wrt` through float tensors (shape arithmetic is cut off), and the integer
    tensors of quantized graphs that hold quantized values (see grad_rules/quantization.py)."""
    reach = {wrt}
    for node in graph.node:
        if node.name.startswith((MEASURED_RANGE, HELD_FIXED)):  # a measured range, a held value: constants
            continue
        if any(name in reach for name in _node_inputs(node)):
            constant = CONSTANT_OUTPUTS.get(node.op_type, ())
            data_reached = bool(node.input) and node.input[0] in reach
            reach.update(o for i, o in enumerate(node.output) if o and i not in constant and (
                _is_float(ctx, o) or carries_quantized_values(node, i, data_reached)))
    return reach


def _ancestors(graph: onnx.GraphProto, of: str) -> set[str]:
    """Every tensor `of` is computed from (including itself)."""
    producer = {o: node for node in graph.node for o in node.output if o}
    seen, stack = {of}, [of]
    while stack:
        node = producer.get(stack.pop())
        if node is None:
            continue
        for name in _node_inputs(node):
            if name not in seen:
                seen.add(name)
                stack.append(name)
    return seen
