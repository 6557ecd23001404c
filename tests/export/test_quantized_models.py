"""INT8 models quantized with ONNX Runtime (QDQ and QOperator static, dynamic), exported and explained from the INT8 file.

The explain graph's gradient dy_c/dA must equal, to 1e-4 relative, torch autograd on the float64 fake-quantized twin
built from the file's quantization parameters with the straight-through rule (tests/support/quantized_reference.py);
its logits and activations are those of ONNX Runtime running the shipped INT8 file, and the scorer gives the shipped
file's logits exactly. Models: torchvision's ResNet-18 and a small EfficientNet-style MBConv net (random weights,
64x64 and 32x32 inputs), calibrated on 4 random images.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fusioncam.export import export_onnx
from fusioncam.export.quantized_graph import add_dequantized_views
from fusioncam.graph_names import ACTIVATIONS, GRADIENTS, INPUT, LOGITS, TARGET, TARGET_USED
from tests.support.onnx_graphs import relative_error
from tests.support.quantized_reference import FakeQuantModel, integer_values

pytestmark = pytest.mark.slow


class MBConv(nn.Module):
    """Expand 1x1, depthwise 3x3, squeeze-and-excite, project 1x1, residual (EfficientNet's block, SiLU)."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        mid = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False),
                                       nn.BatchNorm2d(mid), nn.SiLU())
        self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, 8, 1), nn.SiLU(), nn.Conv2d(8, mid, 1),
                                     nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(mid, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        return x + self.project(y * self.squeeze(y))


class TinyEfficientNet(nn.Module):
    """Stem, two MBConv blocks, head conv, pooling, classifier: the shape of EfficientNet at a small scale."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.blocks = nn.Sequential(MBConv(16), MBConv(16))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.SiLU())
        self.classifier = nn.Linear(32, classes)

    def forward(self, x):
        return self.classifier(self.head(self.blocks(self.stem(x))).mean(dim=(2, 3)))


def _randomised(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics too (fresh ones are the identity), in eval mode."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


def _models():
    import torchvision

    torch.manual_seed(0)
    return {"resnet18": (_randomised(torchvision.models.resnet18(num_classes=10)), 64),
            "mbconv": (_randomised(TinyEfficientNet()), 32)}


def _quantized_file(folder, name: str, fmt: str) -> tuple[str, str, int]:
    """(float file, INT8 file, input size) of model `name` quantized by ONNX Runtime in format `fmt`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model, size = _models()[name]
    float_path, pre_path, int8_path = (str(folder / f"{name}{suffix}.onnx") for suffix in ("", "_pre", f"_{fmt}"))
    torch.onnx.export(model, torch.randn(1, 3, size, size), float_path, input_names=["image"],
                      output_names=["scores"], dynamic_axes={"image": {0: "N"}, "scores": {0: "N"}}, opset_version=17,
                      dynamo=False)
    quant_pre_process(float_path, pre_path)

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(5)
            self.batches = iter([{"image": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    if fmt == "dynamic":
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(pre_path, int8_path)
    else:
        quantize_static(pre_path, int8_path, Calibration(),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator)
    return float_path, int8_path, size


def _session(model, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(str(model) if not isinstance(model, bytes) else model, options,
                                providers=["CPUExecutionProvider"])


def onnx_logits(path: str, images: np.ndarray) -> np.ndarray:
    """The shipped file's class scores, run as deployed."""
    return _session(path).run(None, {"image": images})[0]


@pytest.mark.parametrize("name", ["resnet18", "mbconv"])
def test_dynamic_int8_gradients_match_the_fake_quantized_reference(tmp_path, name):
    """quantize_dynamic: each image is quantized with its own range (the shipped graph's answer for a batch of one)."""
    _, int8_path, size = _quantized_file(tmp_path, name, "dynamic")
    result = export_onnx(int8_path, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["source_precision"]["format"] == "dynamic"
    assert "one quantization range per image" in result.describe()

    images = np.random.default_rng(11).standard_normal((2, 3, size, size)).astype(np.float32)
    alone = np.concatenate([onnx_logits(int8_path, images[i:i + 1]) for i in range(2)])
    middle = np.argsort(alone, axis=1)[:, 5].astype(np.int64)
    logits, activations, gradients, classes = _session(result.bundle.explain_path).run(
        [LOGITS, ACTIVATIONS, GRADIENTS, TARGET_USED], {INPUT: images, TARGET: middle})
    scores = _session(result.bundle.scorer_path).run([LOGITS], {INPUT: images})[0]
    # int32 sums held in float32: exact below 2^24, float32 rounding beyond
    assert relative_error(logits, alone) <= 1e-5 and relative_error(scores, alone) <= 1e-5

    source = onnx.load(int8_path)
    reference = FakeQuantModel(source)
    for i in range(2):
        image = images[i:i + 1]
        _, ref_a, ref_grad = reference.gradient(image, integer_values(source, image, "image"), result.layer.name,
                                                classes[i:i + 1])
        assert relative_error(activations[i:i + 1], ref_a) <= 1e-5, "activations differ from the INT8 graph's"
        assert np.abs(ref_grad).max() > 0
        err = relative_error(gradients[i:i + 1].astype(np.float64), ref_grad)
        assert err <= 1e-4, f"{name} dynamic image {i}: gradient relative error {err:.2e}"


@pytest.mark.parametrize("name", ["resnet18", "mbconv"])
@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_int8_gradients_match_the_fake_quantized_reference(tmp_path, name, fmt):
    _, int8_path, size = _quantized_file(tmp_path, name, fmt)
    result = export_onnx(int8_path, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["source_precision"]["format"] == ("QDQ" if fmt == "qdq" else "QOperator")
    assert "straight-through" in manifest["source_precision"]["gradient"]
    assert "straight-through gradients" in result.describe()

    images = np.random.default_rng(11).standard_normal((2, 3, size, size)).astype(np.float32)
    # A class whose logit lies inside the output's quantization range: a saturated logit (often the top one of a
    # model calibrated on 4 images) has zero gradient under the straight-through rule, and would prove nothing.
    middle = np.argsort(onnx_logits(int8_path, images), axis=1)[:, 5].astype(np.int64)
    feed = {INPUT: images, TARGET: middle}
    names = [LOGITS, ACTIVATIONS, GRADIENTS, TARGET_USED]
    logits, activations, _, classes = _session(result.bundle.explain_path).run(names, feed)

    # Forward: as deployed (ORT fuses the QDQ units into integer ops), the explain graph's logits and activations
    # are those of the shipped INT8 file, and the scorer's logits too.
    source = onnx.load(int8_path)
    add_dequantized_views(source)  # the float views of QOperator maps (identity on the integer values)
    source.graph.output.append(onnx.helper.make_empty_tensor_value_info(result.layer.name))
    shipped_logits, shipped_activations = _session(source.SerializeToString()).run(None, {"image": images})
    np.testing.assert_array_equal(activations, shipped_activations)
    np.testing.assert_array_equal(logits, shipped_logits)
    np.testing.assert_array_equal(_session(result.bundle.scorer_path).run([LOGITS], {INPUT: images})[0],
                                  onnx_logits(int8_path, images))

    # Gradients: both sides read the same quantized values. Asking ORT for the intermediate values keeps it from
    # fusing QDQ units (a fused unit rounds its float32 sums differently), so both run unfused here.
    unfused = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    _, activations, gradients, classes = _session(result.bundle.explain_path, unfused).run(names, feed)
    reference = FakeQuantModel(source)
    snap = integer_values(source, images, "image")  # the same batch: ORT's float kernels vary with it
    _, ref_a, ref_grad = reference.gradient(images, snap, result.layer.name, classes)
    assert relative_error(activations, ref_a) <= 1e-5, "activations differ from the INT8 graph's"
    for i in range(2):
        assert np.abs(ref_grad[i]).max() > 0
        err = relative_error(gradients[i].astype(np.float64), ref_grad[i])
        assert err <= 1e-4, f"{name} {fmt} image {i}: gradient relative error {err:.2e}"
