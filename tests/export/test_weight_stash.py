"""Export with large weights held aside (weight_stash) writes exactly the graphs it writes without."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import fusioncam
from fusioncam.export import weight_stash
from fusioncam.export.classifier_graph import prepare_classifier
from fusioncam.bundle import WEIGHTS_FILE, load_bundle
from tests.support.parity import model_named

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


def with_data_inline(path) -> bytes:
    """A graph with its external data read back in, serialised (onnx marks the read tensors DEFAULT explicitly)."""
    model = onnx.load(str(path))
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.DEFAULT:
            tensor.ClearField("data_location")
    return model.SerializeToString()


def graphs_with_their_data(bundle_path) -> dict[str, bytes]:
    """Each graph of a bundle, its weights inline."""
    bundle = load_bundle(bundle_path)
    return {name: with_data_inline(bundle.file(name)) for name in bundle.manifest.files if name.endswith(".onnx")}


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
    assert graphs_with_their_data(aside.bundle.path) == graphs_with_their_data(plain.bundle.path)
    assert (WEIGHTS_FILE in aside.bundle.manifest.files) == (threshold == 256)
    assert WEIGHTS_FILE not in plain.bundle.manifest.files  # a bundle with every weight inline still loads and runs
    images = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    maps = [fusioncam.Explainer(result.bundle, device="cpu").explain(images).fusion for result in (plain, aside)]
    np.testing.assert_array_equal(maps[0], maps[1])
    assert np.ptp(maps[0]) > 0


@pytest.mark.slow
def test_torch_export_is_byte_identical_with_weights_aside(tmp_path, monkeypatch):
    model = model_named("resnet18")
    monkeypatch.setattr(weight_stash, "MIN_ELEMENTS", NOTHING_ASIDE)
    plain = fusioncam.export_torch(model, "layer4", tmp_path / "plain.fcam", input_size=(64, 64))
    monkeypatch.undo()
    aside = fusioncam.export_torch(model, "layer4", tmp_path / "aside.fcam", input_size=(64, 64))
    assert graphs_with_their_data(aside.bundle.path) == graphs_with_their_data(plain.bundle.path)


def test_graphs_share_one_copy_of_the_weights(tmp_path):
    model = model_named("resnet18")
    bundle = fusioncam.export_torch(model, "layer4", tmp_path / "b.fcam", input_size=(64, 64)).bundle
    large = [p for p in model.state_dict().values() if p.numel() >= weight_stash.MIN_ELEMENTS]
    large_bytes = sum(p.numel() * 4 for p in large)
    weights = bundle.file(WEIGHTS_FILE).stat().st_size
    assert large_bytes <= weights <= large_bytes + len(large) * weight_stash.ALIGNMENT  # each stored once
    for graph in ("scorer.onnx", "explain.onnx"):
        assert bundle.file(graph).stat().st_size < large_bytes / 20  # references, not copies
