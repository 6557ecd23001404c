"""Tiny hand-built ONNX classifiers for tests that need a graph with a known structure."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_classifier(channels: int = 3, size: int = 8, classes: int = 5, extra_nodes=(), head_op: str | None = None,
                    opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """input [N,channels,size,size] -> Conv(4) -> Relu ('feat') -> [head_op] -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, channels, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.standard_normal((classes, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal((classes,)).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["feat"], name="relu"),
    ]
    pooled_from = "feat"
    if head_op is not None:
        nodes.append(helper.make_node(head_op, ["feat"], ["head"], name=f"head_{head_op.lower()}"))
        pooled_from = "head"
    nodes += [
        helper.make_node("GlobalAveragePool", [pooled_from], ["pool"], name="gap"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits_raw"], transB=1, name="fc"),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logits_raw", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path) -> str:
    """Write a model and return its path as text."""
    onnx.save(model, str(path))
    return str(path)


def tiny_bundle_at(folder, *, size: int, classes: int = 5, seed: int, class_names=None):
    """tiny_classifier(size, classes, seed) saved as folder/tiny.onnx and exported at 'feat' into folder/tiny.bundle
    (its path returned)."""
    import fusioncam

    model = save(tiny_classifier(size=size, classes=classes, seed=seed), folder / "tiny.onnx")
    fusioncam.export_onnx(model, folder / "tiny.bundle", "feat", class_names=class_names)
    return folder / "tiny.bundle"
