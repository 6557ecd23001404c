"""`fusioncam export` and `fusioncam layers`: thin commands over the API, with one-line errors."""

from __future__ import annotations

import torch

from fusioncam.bundle import load_bundle
from fusioncam.cli.main import main
from tests.support.tiny_models import save, tiny_classifier


def test_layers_lists_candidates_in_graph_order(tmp_path, capsys):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    assert main(["layers", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["layer", "op", "shape", "note"]
    assert [line.split()[0] for line in lines[1:]] == ["conv", "feat", "pool"]
    assert lines[2].split() == ["feat", "Relu", "Nx4x8x8"]


def test_export_onnx_writes_a_verified_bundle(tmp_path, capsys):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    assert main(["export", path, "--out", str(tmp_path / "m.fcam")]) == 0
    assert "target 'feat'" in capsys.readouterr().out
    manifest = load_bundle(tmp_path / "m.fcam").manifest
    assert (manifest.channels, manifest.feature_size, manifest.num_classes) == (4, (8, 8), 5)


def test_export_torchvision_name_with_state_dict(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pt"
    torch.save(__import__("torchvision").models.resnet18(weights=None).state_dict(), weights)
    code = main(["export", "resnet18", "--weights", str(weights), "--layer", "layer4", "--input-size", "64", "64",
                 "--out", str(tmp_path / "r.fcam")])
    assert code == 0
    manifest = load_bundle(tmp_path / "r.fcam").manifest
    assert manifest.target_layer == "layer4" and manifest.channels == 512 and manifest.class_names[1] == "goldfish"


def test_errors_are_one_clean_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.onnx"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fusioncam export: error: model file not found") and "Traceback" not in err
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    assert main(["export", path, "--layer", "fet", "--out", str(tmp_path / "b")]) == 2
    assert "Closest names: feat" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
