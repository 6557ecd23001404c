"""ShapleyCAM's Hessian-vector product, in the graph: the explain graph differentiated a second time.

ShapleyCAM (Cai et al., 2025; pytorch-grad-cam 1.5.7's `ShapleyCAM`) weights channel k by the spatial mean of
`G - 0.5 * H A`, where G = dy_c/dA is the explain graph's gradient and `H A` the Hessian of y_c with respect to the
target layer's activations A times A itself: `H A = d(sum(G * A')) / dA` with A' = A held constant. The explain
graph's backward nodes are ordinary ONNX ops, so the same reverse-mode walk (export/autodiff.py) differentiates them
again, with the activations as the seed: the second pass is exact wherever every op on the way has a gradient rule
(an op without one is an UnsupportedOpError naming it).

Where G depends on A only through comparisons (ReLU masks, max-pool indices: a piecewise-linear network between
the target layer and the logits, such as a ResNet's), G is locally constant in A and `H A` is exactly 0; the walk
finds no float path from A to G, and `build_hessian_vector` says so by returning None (the method then runs on the
main explain pass alone).
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..errors import LayerError
from ..graph_names import ACTIVATIONS, GRADIENTS
from .explain_graph import TARGET_GRADIENT
from .graph_surgery import prune_to_outputs

HESSIAN_VECTOR = "shapley/hessian_vector"  # float32 [N, K, h, w]: H A, laid out as the explain graph's gradients
_RAW = "shapley/hessian_vector_raw"  # H A before the layout rearrangement (the target tensor's own layout)


def _producer(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _target_tensor(graph: onnx.GraphProto) -> str:
    """The target layer's tensor: the source of the ACTIVATIONS output (explain_graph.target_maps: an Identity, or the
    layout nodes named explain/layout_a/..., the first of which reads the target tensor)."""
    for node in graph.node:
        if node.name.startswith("explain/layout_a/") and not node.input[0].startswith("explain/layout_a/"):
            return node.input[0]
    producer = _producer(graph)
    node = producer.get(ACTIVATIONS)
    if node is None or node.op_type != "Identity":
        raise LayerError("the explain graph's activations output has no recognisable source tensor; re-export the "
                         "bundle with this fusioncam")
    return node.input[0]


def _replay_layout(model: onnx.ModelProto) -> None:
    """Append copies of the nodes that turn TARGET_GRADIENT into GRADIENTS, applied to _RAW, ending in HESSIAN_VECTOR."""
    graph = model.graph
    producer = _producer(graph)
    path, stack, seen = [], [GRADIENTS], set()
    while stack:  # nodes between TARGET_GRADIENT and GRADIENTS
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        path.append(node)
        stack.extend(name for name in node.input if name and name != TARGET_GRADIENT)
    depends = {TARGET_GRADIENT}
    copies = []
    for node in graph.node:  # graph order is topological
        if id(node) not in seen or not any(name in depends for name in node.input):
            continue
        depends.update(node.output)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"shapley/{node.name}"
        renamed = {name: f"shapley/{name}" for name in depends}
        renamed[TARGET_GRADIENT] = _RAW
        copy.input[:] = [renamed.get(name, name) for name in node.input]
        copy.output[:] = [HESSIAN_VECTOR if name == GRADIENTS else f"shapley/{name}" for name in node.output]
        copies.append(copy)
    graph.node.extend(copies)


def build_hessian_vector(explain: onnx.ModelProto) -> onnx.ModelProto | None:
    """The explain graph with one more output, HESSIAN_VECTOR (H A, see the module docstring); None where H A is
    exactly 0 (no float path from the activations to their gradient)."""
    from .autodiff import differentiate

    target = _target_tensor(explain.graph)
    try:
        model = differentiate(explain, wrt=target, of=TARGET_GRADIENT, seed=target, grad_name=_RAW)
    except LayerError:  # the names exist (checked by _target_tensor), so: G does not depend on A through floats
        return None
    _replay_layout(model)
    outputs = [o.name for o in model.graph.output]
    value = next(o for o in model.graph.output if o.name == GRADIENTS)
    model.graph.output.append(helper.make_tensor_value_info(HESSIAN_VECTOR, value.type.tensor_type.elem_type, None))
    model.graph.output[-1].type.CopyFrom(value.type)
    prune_to_outputs(model, [*outputs, HESSIAN_VECTOR])
    return model
