"""Small edits on ONNX graphs: renaming tensors and pruning to the nodes some outputs need."""

from __future__ import annotations

import onnx


def all_tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name the graph mentions."""
    graph = model.graph
    names = {init.name for init in graph.initializer}
    names.update(value.name for value in list(graph.input) + list(graph.output) + list(graph.value_info))
    for node in graph.node:
        names.update(n for n in list(node.input) + list(node.output) if n)
    return names


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a tensor everywhere in the top-level graph (in place)."""
    graph = model.graph
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
    for init in graph.initializer:
        if init.name == old:
            init.name = new


def free_names(model: onnx.ModelProto, reserved: list[str]) -> dict[str, str]:
    """Rename tensors that use any reserved name to a prefixed one; return old -> new."""
    existing = all_tensor_names(model)
    moved = {}
    for name in reserved:
        if name in existing:
            new = f"source/{name}"
            while new in existing:
                new = f"source/{new}"
            rename_tensor(model, name, new)
            existing.add(new)
            moved[name] = new
    return moved


def prune_to_outputs(model: onnx.ModelProto, outputs: list[str]) -> None:
    """Keep only the nodes and initializers the given graph outputs need (in place)."""
    graph = model.graph
    needed = set(outputs)
    kept = []
    for node in reversed(list(graph.node)):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    values = [value for value in graph.value_info if value.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(values)
    graph_inputs = [value for value in graph.input if value.name in needed]
    del graph.input[:]
    graph.input.extend(graph_inputs)
