"""Export with large weights held aside (weight_stash) writes exactly the graphs it writes without."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusioncam
from fusioncam.export import weight_stash
from fusioncam.export.classifier_graph import prepare_classifier
from fusioncam.bundle import load_bundle
from test_export_parity import model_named

NOTHING_ASIDE = 1 << 62


def constant_and_transposed_weights() -> onnx.ModelProto:
    """Conv weight from a Constant node, head weight through a Transpose: both are folded from set-aside data."""
    rng = np.random.default_rng(3)
    conv_w = numpy_helper.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32), "conv_w_value")
    nodes = [
        helper.make_node("Constant", [], ["conv_w"], value=conv_w, name="conv_w"),
        helper.make_node("Conv", ["x", "conv_w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["feat"], name="relu"),
        helper.make_node("GlobalAveragePool", ["feat"], ["pool"], name="gap"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Transpose", ["fc_w_t"], ["fc_w"], perm=[1, 0], name="fc_w"),
        helper.make_node("MatMul", ["flat", "fc_w"], ["scores"], name="fc"),
        helper.make_node("Add", ["scores", "fc_b"], ["logits"], name="bias"),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((10, 32)).astype(np.float32), "fc_w_t"),
             numpy_helper.from_array(rng.standard_normal((10,)).astype(np.float32), "fc_b")]
    graph = helper.make_graph(nodes, "stash", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def graph_bytes(bundle_path) -> dict[str, bytes]:
    bundle = load_bundle(bundle_path)
    return {name: bundle.file(name).read_bytes() for name in bundle.manifest.files}


def test_folding_reads_and_keeps_set_aside_weights(monkeypatch):
    monkeypatch.setattr(weight_stash, "MIN_ELEMENTS", 256)
    classifier = prepare_classifier(constant_and_transposed_weights(), "test model")
    held = {init.name for init in classifier.model.graph.initializer if weight_stash.is_set_aside(init)}
    # fc_w_t is held before folding; conv_w (a Constant) and fc_w (its Transpose) are fold results held after it
    assert held == {"fc_w_t", "conv_w", "fc_w"} and len(classifier.weights) == 3
    tensor = next(init for init in classifier.model.graph.initializer if init.name == "fc_w")
    assert not tensor.raw_data and not tensor.float_data
    want = numpy_helper.to_array(constant_and_transposed_weights().graph.initializer[0]).T
    np.testing.assert_array_equal(classifier.weights.array(tensor), want)


@pytest.mark.parametrize("threshold", [256, weight_stash.MIN_ELEMENTS])
def test_onnx_export_is_byte_identical_with_weights_aside(tmp_path, monkeypatch, threshold):
    path = tmp_path / "model.onnx"
    onnx.save(constant_and_transposed_weights(), path)
    monkeypatch.setattr(weight_stash, "MIN_ELEMENTS", NOTHING_ASIDE)
    plain = fusioncam.export_onnx(path, tmp_path / "plain.fcam", fp16_scorer=True)
    monkeypatch.setattr(weight_stash, "MIN_ELEMENTS", threshold)
    aside = fusioncam.export_onnx(path, tmp_path / "aside.fcam", fp16_scorer=True)
    assert graph_bytes(aside.bundle.path) == graph_bytes(plain.bundle.path)


def test_torch_export_is_byte_identical_with_weights_aside(tmp_path, monkeypatch):
    model = model_named("resnet18")
    monkeypatch.setattr(weight_stash, "MIN_ELEMENTS", NOTHING_ASIDE)
    plain = fusioncam.export_torch(model, "layer4", tmp_path / "plain.fcam", input_size=(64, 64))
    monkeypatch.undo()
    aside = fusioncam.export_torch(model, "layer4", tmp_path / "aside.fcam", input_size=(64, 64))
    assert graph_bytes(aside.bundle.path) == graph_bytes(plain.bundle.path)
