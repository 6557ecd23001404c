"""Bad input to the exporter: each case gets a clear, specific error (what, where, how to fix)."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import fusioncam
from fusioncam.errors import LayerError, ModelLoadError, UnsupportedOpError
from fusioncam.export.model_zoo import torchvision_model
from tests.support.tiny_models import save, tiny_classifier


def test_unknown_onnx_layer_lists_closest_names(tmp_path):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    with pytest.raises(LayerError, match=r"unknown target layer 'fet'.*Closest names: .*feat"):
        fusioncam.export_onnx(path, tmp_path / "b", target_layer="fet")


def test_unknown_torch_layer_lists_closest_paths(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(LayerError, match=r"unknown target layer '11'.*Closest module paths: 1"):
        fusioncam.export_torch(model, "11", tmp_path / "b", input_size=(16, 16))


def test_layer_that_is_not_4d(tmp_path):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    with pytest.raises(LayerError, match=r"'flat' has shape \('N', 4\).*4-D"):
        fusioncam.export_onnx(path, tmp_path / "b", target_layer="flat")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 2))
    with pytest.raises(LayerError, match=r"'1' outputs \(2, 784\).*4-D"):
        fusioncam.export_torch(model, "1", tmp_path / "b2", input_size=(16, 16))


def test_layer_the_logits_do_not_depend_on(tmp_path):
    side = helper.make_node("Sigmoid", ["conv"], ["side_branch"], name="unused_branch")
    path = save(tiny_classifier(extra_nodes=[side]), tmp_path / "m.onnx")
    with pytest.raises(LayerError, match=r"'side_branch' does not reach the logits"):
        fusioncam.export_onnx(path, tmp_path / "b", target_layer="side_branch")


def test_unsupported_op_names_op_node_and_supported_list(tmp_path):
    path = save(tiny_classifier(head_op="Cos"), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedOpError) as info:
        fusioncam.export_onnx(path, tmp_path / "b", target_layer="feat")
    message = str(info.value)
    assert "Cos" in message and "head_cos" in message and "Conv" in message and "MaxPool" in message
    assert not (tmp_path / "b").exists(), "no partial bundle is left behind"


def test_truncated_and_foreign_files(tmp_path):
    data = tiny_classifier().SerializeToString()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated.onnx.*not a readable ONNX model|truncated.onnx.*holds no graph"):
        fusioncam.export_onnx(truncated, tmp_path / "b")
    foreign = tmp_path / "photo.onnx"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match="photo.onnx"):
        fusioncam.export_onnx(foreign, tmp_path / "b")
    with pytest.raises(ModelLoadError, match="model file not found: .*missing.onnx"):
        fusioncam.export_onnx(tmp_path / "missing.onnx", tmp_path / "b")


def test_input_that_is_not_nchw_rgb(tmp_path):
    path = save(tiny_classifier(channels=1), tmp_path / "gray.onnx")
    with pytest.raises(ModelLoadError, match=r"input 'x' is float \[N,1,8,8\].*\[N,3,H,W\]"):
        fusioncam.export_onnx(path, tmp_path / "b")


def test_external_data_outside_model_directory_is_refused(tmp_path):
    model = tiny_classifier()
    weight = next(init for init in model.graph.initializer if init.name == "conv_w")
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../secrets.bin"
    (tmp_path / "secrets.bin").write_bytes(np.zeros(4 * 3 * 3 * 3, np.float32).tobytes())
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    onnx.save(model, str(model_dir / "m.onnx"), save_as_external_data=False)
    with pytest.raises(ModelLoadError, match=r"'\.\./secrets\.bin', outside the model's directory"):
        fusioncam.export_onnx(model_dir / "m.onnx", tmp_path / "b")


class _Payload:
    def __reduce__(self):
        return (print, ("this would run arbitrary code",))


def test_torch_weights_are_loaded_with_weights_only(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as handle:
        pickle.dump({"fc.weight": _Payload()}, handle)
    with pytest.raises(ModelLoadError, match=r"evil.pt.*weights_only=True"):
        torchvision_model("resnet18", evil)
    torch.manual_seed(0)
    good = tmp_path / "good.pt"
    reference = __import__("torchvision").models.resnet18(weights=None)
    torch.save(reference.state_dict(), good)
    loaded = torchvision_model("resnet18", good).module
    assert torch.equal(loaded.fc.weight, reference.fc.weight)
    with pytest.raises(ModelLoadError, match="needs --weights FILE"):
        torchvision_model("resnet18", None)
