"""An opset 11 classifier ending in Softmax whose logits' rank shape inference cannot tell (PaddlePaddle's flatten:
Reshape to a shape computed at run time): ONNX's version converter rewrites the old Softmax as
Reshape(Softmax(Flatten(y)), Shape(y)). The bundle must still explain the pre-softmax logits y (rapidocr's
orientation classifier ends this way), not the probabilities."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from fusioncam.export import export_onnx
from tests.support.onnx_graphs import assert_close

node = helper.make_node


def _paddle_style_classifier(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes = [node("Conv", ["x", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
             node("Relu", ["conv"], ["features"]),
             node("GlobalAveragePool", ["features"], ["pooled"]),
             node("Shape", ["pooled"], ["pooled_shape"]),
             node("Slice", ["pooled_shape", "zero", "one"], ["batch"]),
             node("Concat", ["batch", "minus_one"], ["flat_shape"], axis=0),
             node("Reshape", ["pooled", "flat_shape"], ["flat"]),
             node("MatMul", ["flat", "fc_w"], ["fc"]),
             node("Add", ["fc", "fc_b"], ["logits"]),
             node("Softmax", ["logits"], ["softmax"], axis=1),
             node("Identity", ["softmax"], ["probabilities"])]
    consts = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64), "minus_one": np.array([-1], np.int64)}
    graph = helper.make_graph(
        nodes, "paddle_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in {**weights, **consts}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    return model


def test_opset_11_softmax_classifier_explains_its_logits(tmp_path) -> None:
    rng = np.random.default_rng(1)
    weights = {"conv_w": rng.standard_normal((5, 3, 3, 3)).astype(np.float32),
               "conv_b": rng.standard_normal(5).astype(np.float32),
               "fc_w": rng.standard_normal((5, 3)).astype(np.float32),
               "fc_b": rng.standard_normal(3).astype(np.float32)}
    onnx.save(_paddle_style_classifier(weights), tmp_path / "softmax11.onnx")
    converted = onnx.version_converter.convert_version(_paddle_style_classifier(weights), 17)
    assert [n.op_type for n in converted.graph.node][-4:] == ["Flatten", "Softmax", "Reshape", "Identity"]

    result = export_onnx(tmp_path / "softmax11.onnx", tmp_path / "softmax11.fcam", "features")
    session = ort.InferenceSession(str(result.bundle.explain_path), providers=["CPUExecutionProvider"])
    images = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    logits, gradients = session.run(["logits", "gradients"], {"input": images, "target": np.array([2, 0])})

    t = {k: torch.from_numpy(v) for k, v in weights.items()}
    features = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(images), t["conv_w"], t["conv_b"], padding=1))
    features = features.detach().requires_grad_(True)
    want_logits = features.mean(dim=(2, 3)) @ t["fc_w"] + t["fc_b"]
    assert_close(logits, want_logits.detach().numpy(), what="logits")
    (want_gradients,) = torch.autograd.grad(want_logits[0, 2] + want_logits[1, 0], features)
    assert_close(gradients, want_gradients.numpy(), what="d logit / d features")
