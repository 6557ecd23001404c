"""`export_onnx` on plain ONNX files exported by others (TorchScript and dynamo exporters), against autograd."""

from __future__ import annotations

import warnings

import pytest
import torch

import fusioncam
from tests.support.autograd_reference import assert_parity, autograd_layer_gradients, non_inplace, run_explain_graph
from tests.support.parity import images_for, model_named
from tests.support.torch_reference import module_by_path

# (model, the module whose output the automatic choice should land on, input size, exporter)
CASES = [
    ("resnet18", "layer4", 64, "torchscript"),
    ("resnet50", "layer4", 64, "dynamo"),
    ("mobilenet_v2", "features.18", 64, "torchscript"),
    ("convnext_tiny", "features.7", 64, "dynamo"),
    ("efficientnet_lite0", "_swish", 224, "dynamo"),  # the shared ReLU6 module's last call: the conv head's output
]


def plain_onnx(model: torch.nn.Module, size: int, path, exporter: str) -> None:
    """Export a classifier the way a user would, with a dynamic batch, no fusioncam involved."""
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["pixels"], output_names=["scores"],
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), verbose=False)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["pixels"],
                              output_names=["scores"], dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}})


@pytest.mark.slow
@pytest.mark.parametrize("name,module_path,size,exporter", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_export_onnx_auto_and_named_target(tmp_path, name, module_path, size, exporter):
    model = non_inplace(model_named(name))
    onnx_path = tmp_path / f"{name}.onnx"
    plain_onnx(model, size, onnx_path, exporter)
    auto = fusioncam.export_onnx(onnx_path, tmp_path / "auto.fcam")
    assert auto.picked_automatically and auto.layer.name in auto.describe()
    named = fusioncam.export_onnx(onnx_path, tmp_path / "named.fcam", target_layer=auto.layer.name)
    module = module_by_path(model, module_path)
    images, targets = images_for(size, 3), [3, -1, 11]
    want = autograd_layer_gradients(model, module, images, targets)
    for result in (auto, named):
        assert_parity(run_explain_graph(result.bundle.path, images, targets), want)


@pytest.mark.slow
def test_final_softmax_is_stripped(tmp_path):
    """A graph ending in Softmax is explained through its input: the logits, not probabilities."""
    base = non_inplace(model_named("resnet18"))
    with_softmax = torch.nn.Sequential(base, torch.nn.Softmax(dim=1)).eval()
    onnx_path = tmp_path / "softmax.onnx"
    plain_onnx(with_softmax, 64, onnx_path, "torchscript")
    result = fusioncam.export_onnx(onnx_path, tmp_path / "b.fcam")
    images, targets = images_for(64, 2), [7, -1]
    want = autograd_layer_gradients(base, base.layer4, images, targets)
    assert_parity(run_explain_graph(result.bundle.path, images, targets), want)
