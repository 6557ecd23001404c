"""`fusioncam export --mean/--std/--class-names`: a shipped .onnx file's own normalisation and class list reach the
bundle's manifest (and so every reader's preprocessing), for classifiers and detectors; bad files are one line."""

from __future__ import annotations

import numpy as np
import pytest

from fusioncam import Explainer
from fusioncam.bundle import load_bundle
from fusioncam.cli.main import main
from fusioncam.images import preprocess
from tests.support.detection_models import TARGET_TENSOR, TinyYolo, export_tiny_yolo
from tests.support.tiny_models import save, tiny_classifier


def test_classifier_gets_the_given_statistics_and_names(tmp_path, capsys):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    names = tmp_path / "names.txt"
    names.write_text("\ufeffcat\ndog\nbird\nfish\nhorse\n\n", encoding="utf-8")
    assert main(["export", path, "--out", str(tmp_path / "m.fcam"), "--mean", "0.5", "0.5", "0.5",
                 "--std", "0.25", "0.5", "1", "--class-names", str(names)]) == 0
    manifest = load_bundle(tmp_path / "m.fcam").manifest
    assert tuple(manifest.mean) == (0.5, 0.5, 0.5) and tuple(manifest.std) == (0.25, 0.5, 1.0)
    assert manifest.class_names == ["cat", "dog", "bird", "fish", "horse"]
    # the explainer's file reader normalises with them: a white image is (1 - 0.5) / std per channel
    white = np.full((8, 8, 3), 255, np.uint8)
    got = preprocess(white, (8, 8), manifest.mean, manifest.std)
    assert np.allclose(got[:, 0, 0], [2.0, 1.0, 0.5])
    explainer = Explainer(tmp_path / "m.fcam")
    assert explainer.bundle.manifest.class_names[4] == "horse"


def test_detector_keeps_yolo_defaults_unless_told(tmp_path):
    export_tiny_yolo(TinyYolo().eval(), tmp_path / "y.onnx")
    names = tmp_path / "coco3.names"
    names.write_text("person\nbike\ncar\n", encoding="utf-8")
    common = ["export", str(tmp_path / "y.onnx"), "--task", "detection", "--layout", "yolov8", "--layer", TARGET_TENSOR]
    assert main([*common, "--out", str(tmp_path / "a.fcam"), "--class-names", str(names)]) == 0
    plain = load_bundle(tmp_path / "a.fcam").manifest
    assert tuple(plain.mean) == (0.0, 0.0, 0.0) and tuple(plain.std) == (1.0, 1.0, 1.0)
    assert plain.class_names == ["person", "bike", "car"]
    assert main([*common, "--out", str(tmp_path / "b.fcam"), "--mean", "0.1", "0.2", "0.3"]) == 0
    assert tuple(load_bundle(tmp_path / "b.fcam").manifest.mean) == pytest.approx((0.1, 0.2, 0.3))


@pytest.mark.parametrize("content, message", [
    (b"cat\n\ndog\n", "empty lines between names (line 2)"),
    (b"\xff\xfecat", "is not UTF-8 text"),
    (b"\n\n", "holds no class names"),
])
def test_bad_class_name_files_are_one_line(tmp_path, capsys, content, message):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    names = tmp_path / "names.txt"
    names.write_bytes(content)
    assert main(["export", path, "--out", str(tmp_path / "m.fcam"), "--class-names", str(names)]) == 2
    err = capsys.readouterr().err
    assert message in err and "names.txt" in err and "Traceback" not in err
    assert not (tmp_path / "m.fcam").exists()


def test_wrong_number_of_names_and_bad_std_are_refused(tmp_path, capsys):
    path = save(tiny_classifier(), tmp_path / "m.onnx")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n", encoding="utf-8")
    assert main(["export", path, "--out", str(tmp_path / "m.fcam"), "--class-names", str(names)]) == 2
    assert "2 class names given but the model has 5 classes" in capsys.readouterr().err
    assert main(["export", path, "--out", str(tmp_path / "m.fcam"), "--std", "0", "1", "1"]) == 2
    assert "std" in capsys.readouterr().err
    assert main(["export", path, "--out", str(tmp_path / "m.fcam"), "--class-names", str(tmp_path / "no.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bgr_classifier_gives_its_rgb_twins_logits_and_maps(tmp_path, capsys):
    """`--bgr` on a classifier: a SmallNet whose first convolution reads B, G, R (the RGB net's weights with their
    input channels reversed) explains an RGB photo file as the RGB net does (same class, logits, Grad-CAM map)."""
    import cv2
    import torch

    from tests.support.small_cnn import SmallNet

    torch.manual_seed(0)
    rgb = SmallNet().eval()
    bgr = SmallNet().eval()
    bgr.load_state_dict(rgb.state_dict())
    with torch.no_grad():
        bgr.features[0].weight.copy_(rgb.features[0].weight.flip(1))
    paths = []
    for name, net in (("rgb", rgb), ("bgr", bgr)):
        paths.append(str(tmp_path / f"{name}.onnx"))
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), paths[-1], dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    assert main(["export", paths[0], "--mean", "0.4", "0.5", "0.6", "--std", "0.2", "0.3", "0.4", "--out",
                 str(tmp_path / "rgb.fcam")]) == 0
    assert main(["export", paths[1], "--bgr", "--mean", "0.6", "0.5", "0.4", "--std", "0.4", "0.3", "0.2", "--out",
                 str(tmp_path / "bgr.fcam")]) == 0
    assert "the model takes BGR" in capsys.readouterr().out
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    results = []
    for bundle in ("rgb.fcam", "bgr.fcam"):
        with Explainer(tmp_path / bundle, device="cpu") as explainer:
            results.append(explainer.explain_files([str(photo)], methods=("gradcam",)))
    assert int(results[0].classes[0]) == int(results[1].classes[0])
    assert np.abs(results[0].logits - results[1].logits).max() <= 1e-5
    assert float(results[0].maps["gradcam"].max()) > 0
    assert np.abs(results[0].maps["gradcam"] - results[1].maps["gradcam"]).max() <= 1e-5
