"""Resolve the shapes ONNX shape inference leaves unknown by running the graph once at two batch sizes.

The input size is fixed at export, so every dimension except the batch is a number; ONNX's static inference still
loses them where shapes are computed at run time (Swin's window shifts and pads, ShuffleNet's channel shuffle,
reshapes in exported transformers: 'unk__156'). Running the graph with N = 1 and N = 2 gives each tensor's real
shape twice: a dimension equal in both runs is static, one that is 1 then 2 is the batch N, and one that scales with
the batch otherwise (windows x N) stays unknown, so such tensors are never taken for per-image maps. Graph outputs
get their measured shape too: a segmentation model's class scores (Hugging Face DPT: ['unk__143', 5, 'unk__144',
'unk__145'] from ONNX) are static for a fixed input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .weight_stash import WeightStash

MAX_RUNNABLE_BYTES = 1 << 30  # models larger than this keep ONNX's own shapes (ONNX Runtime reads them from bytes)
_KNOWN = ("",)


def unresolved_tensors(model: onnx.ModelProto, shapes: dict[str, tuple]) -> list[str]:
    """Node outputs whose rank or non-batch dims shape inference did not find, or whose batch dim is not symbolic."""
    missing = []
    for node in model.graph.node:
        for name in node.output:
            if not name:
                continue
            shape = shapes.get(name)
            if shape is None or any(not isinstance(d, int) for d in shape[1:]):
                missing.append(name)
    return missing


def _runnable_copy(model: onnx.ModelProto, weights: WeightStash, outputs: list[str]) -> bytes | None:
    """The model with its weights back in and `outputs` as extra graph outputs, serialised (None: too large)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    weights.put_back(copy)
    existing = {out.name for out in copy.graph.output}
    copy.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in outputs if name not in existing)
    if copy.ByteSize() > MAX_RUNNABLE_BYTES:
        return None
    return copy.SerializeToString()


def _run_shapes(serialized: bytes, input_name: str, input_size: tuple[int, int], names: list[str]) -> list[dict]:
    """Each named tensor's (shape, dtype) with a batch of 1 and of 2 random images."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    runs = []
    rng = np.random.default_rng(0)
    for batch in (1, 2):
        image = rng.standard_normal((batch, 3, *input_size)).astype(np.float32)
        values = session.run(names, {input_name: image})
        runs.append({name: (value.shape, value.dtype) for name, value in zip(names, values)})
        del values
    return runs


def _merged_dims(one: tuple, two: tuple, batch_dim: str) -> list[int | str | None] | None:
    """Dims from the N=1 and N=2 shapes: equal -> static, 1 then 2 -> the batch, otherwise unknown."""
    if len(one) != len(two):
        return None
    dims: list[int | str | None] = []
    for a, b in zip(one, two):
        dims.append(int(a) if a == b else batch_dim if (a, b) == (1, 2) else None)
    return dims


def resolve_shapes(model: onnx.ModelProto, weights: WeightStash, input_name: str, input_size: tuple[int, int],
                   shapes: dict[str, tuple], batch_dim: str) -> bool:
    """Write every unresolved node output's measured shape into `model.graph.value_info` (in place).

    Returns False (and changes nothing) when there is nothing to resolve or the graph cannot run here."""
    missing = unresolved_tensors(model, shapes)
    if not missing:
        return False
    serialized = _runnable_copy(model, weights, missing)
    if serialized is None:
        return False
    try:
        one, two = _run_shapes(serialized, input_name, input_size, missing)
    except Exception:  # noqa: BLE001  (a graph ONNX Runtime cannot run keeps ONNX's shapes; export reports the rest)
        return False
    measured = {}
    for name in missing:
        dims = _merged_dims(one[name][0], two[name][0], batch_dim)
        if dims is not None:
            measured[name] = (dims, helper.np_dtype_to_tensor_dtype(one[name][1]))
    kept = [info for info in model.graph.value_info if info.name not in measured]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    outputs = {out.name: out for out in model.graph.output}
    for name, (dims, elem) in measured.items():
        if name in outputs:  # a graph output's own type would otherwise keep its unknown dims (DPT's 'logits')
            outputs[name].type.CopyFrom(helper.make_tensor_type_proto(elem, dims))
        else:
            model.graph.value_info.append(helper.make_tensor_value_info(name, elem, dims))
    return True
