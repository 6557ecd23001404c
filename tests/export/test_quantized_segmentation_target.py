"""The automatic target of a QOperator INT8 segmentation model (ONNX Runtime's quantize_static, QOperator format).

An LR-ASPP-style head resizes its high-level branch to the low-level map's size (`F.interpolate(x, size=low.shape[-2:])`
and the final upsampling to the input's size): in the QOperator graph the branch's float tensor is a
DequantizeLinear output that only a Shape reads, while the integer tensor carries the values on. Such a tensor's
values never reach the scores (its gradient is zero, autodiff finds no float path), so the automatic choice must
take the branch's float view (`.../dequantized`, quantized_graph.add_dequantized_views) instead.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import fusioncam  # noqa: E402
from fusioncam.export.layers import logits_ancestors  # noqa: E402

SIZE, CLASSES = 32, 3


class LrasppLike(nn.Module):
    """A low-level map at stride 2, a high-level map at stride 4 gated by its pooled sigmoid (LR-ASPP's head), the
    high branch resized to the low map's size, both classified and summed, then resized to the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.deep = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.cbr = nn.Sequential(nn.Conv2d(16, 12, 1), nn.ReLU())
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 12, 1), nn.Sigmoid())
        self.low_classifier = nn.Conv2d(8, CLASSES, 1)
        self.high_classifier = nn.Conv2d(12, CLASSES, 1)

    def forward(self, x):
        low = self.stem(x)
        high = self.deep(low)
        gated = self.cbr(high) * self.scale(high)
        gated = F.interpolate(gated, size=low.shape[-2:], mode="bilinear", align_corners=False)
        out = self.low_classifier(low) + self.high_classifier(gated)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _qoperator_file(folder) -> str:
    """The model exported to ONNX and quantized by ONNX Runtime (static, QOperator format), calibrated on noise."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    torch.manual_seed(0)
    model = LrasppLike().eval()
    float_path, pre_path, int8_path = (str(folder / name) for name in ("seg.onnx", "seg_pre.onnx", "seg_qop.onnx"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, SIZE, SIZE), float_path, input_names=["image"],
                          output_names=["scores"], dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}},
                          opset_version=17, dynamo=False)
    quant_pre_process(float_path, pre_path)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(3)
            self.batches = iter([{"image": rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(pre_path, int8_path, Calibration(), quant_format=QuantFormat.QOperator)
    return int8_path


def _shape_only_float_maps(model: onnx.ModelProto) -> set[str]:
    """Float tensors of the file that only Shape nodes read (the reason this test exists)."""
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    return {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"
            and readers.get(node.output[0]) == ["Shape"]}


def test_a_tensor_read_only_by_shape_is_no_value_ancestor():
    """y = Reshape(x, Shape(Relu(x))): y depends on the Relu's output through its shape only."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Shape", ["a"], ["s"]),
         helper.make_node("Reshape", ["x", "s"], ["y"])], "shape_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])])
    model = helper.make_model(graph)
    assert logits_ancestors(model, "y") == {"x", "a", "s", "y"}
    assert logits_ancestors(model, "y", values_only=True) == {"x", "s", "y"}


@pytest.fixture(scope="module")
def qoperator_file(tmp_path_factory) -> str:
    return _qoperator_file(tmp_path_factory.mktemp("qoperator_segmentation"))


@pytest.mark.slow  # a torch export and ONNX Runtime's static quantization
def test_shape_only_tensors_are_no_value_ancestors(qoperator_file):
    model = onnx.load(qoperator_file)
    shape_only = _shape_only_float_maps(model)
    assert shape_only, "the quantized head should have a float tensor read only by Shape"
    assert shape_only <= logits_ancestors(model, "scores")  # through the Resize's sizes
    assert not shape_only & logits_ancestors(model, "scores", values_only=True)


@pytest.mark.slow  # a torch export and ONNX Runtime's static quantization
def test_qoperator_segmentation_automatic_target_is_the_gated_branch(qoperator_file, tmp_path):
    path = qoperator_file
    shape_only = _shape_only_float_maps(onnx.load(path))
    bundle = fusioncam.export_onnx(path, tmp_path / "seg.fcam").bundle
    target = bundle.manifest.target_tensor
    assert target not in shape_only
    # the gated high branch (12 channels at stride 4) seen through its float view
    assert target.endswith("/dequantized") and bundle.manifest.channels == 12
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        explanation = explainer.explain(images, methods=("gradcam",))
    assert np.all(np.isfinite(explanation.gradcam)) and np.abs(explanation.gradcam).max() > 0
