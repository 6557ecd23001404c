"""Structure-aware mutations for libFuzzer (atheris custom mutators): byte flips rarely get past a JSON or protobuf
parser, so half of the time a parsed manifest or ONNX model has one field changed to an interesting value instead.
"""

from __future__ import annotations

import json
import random

import atheris
import onnx
from onnx import TensorProto, helper

INTERESTING = [0, 1, -1, 2, 3, 7, 8, 224, 2**31 - 1, 2**31, 2**40, -(2**31), 0.5, -0.0, 1e308, float("nan"),
               float("inf"), "", "x", "fusion", None, True, False, [], [0], [1, 1], [8, 8], [0, 8], [100000, 100000],
               [1, 2, 3], {}, ["a"] * 5]
OP_TYPES = ["Relu", "Sigmoid", "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Gemm", "MatMul",
            "Add", "Mul", "Reshape", "Transpose", "Softmax", "Identity", "Concat", "Split", "Resize", "Pad",
            "BatchNormalization", "Custom", "LayerNormalization", "ReduceMean", "Slice", "Gather", "Loop", "If"]


def _mutate_value(value, rng: random.Random):
    """A replacement for one JSON value: an interesting value, or a nearby one of the same kind."""
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return value + rng.choice([-1, 1, value, -value])
    return rng.choice(INTERESTING)


def mutate_json(text: bytes, rng: random.Random) -> bytes | None:
    """One field (or list item) of a JSON object changed, added or removed; None when text is not a JSON object."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not data:
        return None
    key = rng.choice(sorted(data))
    roll = rng.random()
    if roll < 0.1:
        del data[key]
    elif roll < 0.2:
        data[f"extra{rng.randrange(3)}"] = rng.choice(INTERESTING)
    elif isinstance(data[key], list) and data[key] and roll < 0.6:
        data[key][rng.randrange(len(data[key]))] = _mutate_value(data[key][0], rng)
    elif isinstance(data[key], dict) and data[key] and roll < 0.6:
        inner = rng.choice(sorted(data[key]))
        data[key][inner] = _mutate_value(data[key][inner], rng)
    else:
        data[key] = _mutate_value(data[key], rng)
    return json.dumps(data, allow_nan=True).encode("utf-8")


def _mutate_dims(value_info, rng: random.Random) -> None:
    dims = value_info.type.tensor_type.shape.dim
    if dims:
        dim = dims[rng.randrange(len(dims))]
        choice = rng.choice([0, 1, 2, 3, 7, 8, 64, 60000, -1, "N", "H"])
        if isinstance(choice, str):
            dim.dim_param = choice
        else:
            dim.dim_value = choice


def mutate_onnx(data: bytes, rng: random.Random) -> bytes | None:
    """One structural change to an ONNX model (a node's op or attribute, a shape, an initializer, the opset, an
    edge or an output); None when data is not a parsable model with a graph."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        return None
    graph = model.graph
    if not graph.node:
        return None
    node = graph.node[rng.randrange(len(graph.node))]
    roll = rng.randrange(11)
    if roll == 0:
        node.op_type = rng.choice(OP_TYPES)
    elif roll == 1 and node.attribute:
        attribute = node.attribute[rng.randrange(len(node.attribute))]
        if attribute.ints:
            attribute.ints[rng.randrange(len(attribute.ints))] = rng.choice([0, 1, 2, 3, -1, 5, 100])
        else:
            attribute.i = rng.choice([0, 1, 2, -1, 7])
    elif roll == 2:
        node.attribute.append(helper.make_attribute(rng.choice(["axis", "pads", "strides", "group", "perm"]),
                                                    rng.choice([0, 1, -1, [1, 1], [0, 0, 0, 0], [2, 2]])))
    elif roll == 3 and graph.input:
        _mutate_dims(graph.input[rng.randrange(len(graph.input))], rng)
    elif roll == 4 and graph.output:
        _mutate_dims(graph.output[rng.randrange(len(graph.output))], rng)
    elif roll == 5 and graph.initializer:
        tensor = graph.initializer[rng.randrange(len(graph.initializer))]
        if tensor.dims and rng.random() < 0.5:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([0, 1, 2, 3, 4, 5])
        else:
            tensor.data_type = rng.choice([TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64,
                                           TensorProto.FLOAT])
    elif roll == 6 and model.opset_import:
        model.opset_import[0].version = rng.choice([1, 7, 11, 13, 16, 17, 18, 21, 99])
    elif roll == 7 and node.input:
        names = [o for n in graph.node for o in n.output] + [i.name for i in graph.input]
        node.input[rng.randrange(len(node.input))] = rng.choice(names + [""])
    elif roll == 8:
        del graph.node[rng.randrange(len(graph.node))]
    elif roll == 9:
        node.domain = rng.choice(["", "com.microsoft", "custom.domain", "ai.onnx.ml"])
    else:
        graph.output.append(helper.make_tensor_value_info(rng.choice([o for n in graph.node for o in n.output]),
                                                          TensorProto.FLOAT, None))
    try:
        return model.SerializeToString()
    except Exception:
        return None


def structured(prefix_bytes: int, mutate) -> callable:
    """A custom mutator: keep the first prefix_bytes (a selector), mutate the rest with `mutate` half of the time
    (when it parses), else with libFuzzer's own byte mutations."""

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5 and len(data) > prefix_bytes:
            mutated = mutate(data[prefix_bytes:], rng)
            if mutated is not None and len(mutated) + prefix_bytes <= max_size:
                return data[:prefix_bytes] + mutated
        return atheris.Mutate(data, max_size)

    return custom_mutator
