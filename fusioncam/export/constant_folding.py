"""Fold nodes whose inputs are all constants into initializers, so shapes (pads, reshapes) become static."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .weight_stash import WeightStash

# Ops whose output is not a function of their inputs alone.
NON_DETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
MAX_FOLDED_BYTES = 64 << 20


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray], opset: list[onnx.OperatorSetIdProto]) -> list[np.ndarray]:
    """Run one node with the ONNX reference evaluator, at the model's own opset."""
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(f"in{i}", 0, None) for i in range(len(values))]
    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    names = iter(f"in{i}" for i in range(len(values)))
    renamed = [next(names) if name else "" for name in node.input]
    del clone.input[:]
    clone.input.extend(renamed)
    graph = helper.make_graph([clone], "fold", inputs, [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o])
    model = helper.make_model(graph, opset_imports=list(opset))
    feeds = {f"in{i}": value for i, value in enumerate(values)}
    return ReferenceEvaluator(model).run(None, feeds)


def fold_constants(model: onnx.ModelProto, weights: WeightStash) -> onnx.ModelProto:
    """Return a copy where constant subexpressions (Constant nodes, shape-free arithmetic on them) are initializers.

    Initializers set aside in `weights` are read from it; large folded results are set aside there too."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    graph_inputs = {value.name for value in graph.input}
    kept, new_inits = [], []
    for node in graph.node:
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in NON_DETERMINISTIC
            and not any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute)
            and all(name == "" or (name in constants and name not in graph_inputs) for name in node.input)
        )
        if foldable:
            values = [weights.array(constants[name]) for name in node.input if name]
            if sum(v.nbytes for v in values) <= MAX_FOLDED_BYTES:
                try:
                    results = _evaluate(node, values, model.opset_import)
                except Exception:
                    results = None
                if results is not None:
                    for name, value in zip([o for o in node.output if o], results):
                        tensor = numpy_helper.from_array(np.asarray(value), name)
                        constants[name] = tensor
                        new_inits.append(tensor)
                    continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    weights.set_aside(model)
    return model
