"""Models made slow deterministically for the deadline, fairness and cancellation tests: one wide convolution
(many channels at the target layer), so a Score-CAM/Fusion-CAM sweep served with --batch 1 runs one masked
forward per channel, each a full forward of a wide layer; Grad-CAM stays one explain pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import fusioncam


def wide_classifier(channels: int, size: int, classes: int = 5, seed: int = 0) -> onnx.ModelProto:
    """input [N,3,size,size] -> Conv(channels, 3x3) -> Relu ('feat') -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((channels, 3, 3, 3)) * 0.5).astype(np.float32), "conv_w"),
        numpy_helper.from_array((rng.standard_normal(channels) * 0.1).astype(np.float32), "conv_b"),
        numpy_helper.from_array((rng.standard_normal((classes, channels)) * 0.2).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(classes, dtype=np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["feat"], name="feat"),
        helper.make_node("GlobalAveragePool", ["feat"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def wide_bundle(folder: Path, name: str, channels: int, size: int, classes: int = 5) -> Path:
    """The wide classifier exported as a bundle `folder/name.bundle` (target layer 'feat')."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    onnx.save(wide_classifier(channels, size, classes), str(onnx_path))
    out = folder / f"{name}.bundle"
    fusioncam.export_onnx(onnx_path, out, input_size=(size, size), class_names=[f"c{i}" for i in range(classes)])
    return out
