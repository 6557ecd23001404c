"""`fusioncam explain` on a segmentation bundle: the same files as for a classifier (panel with the predicted
segmentation, overlays with the region outlined, raw maps), the maps equal to Explainer.explain's, results.json with
the class, region probability and region; --region for classifiers refused."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from fusioncam import Explainer, export_torch_segmentation
from fusioncam.cli.main import main
from fusioncam.images import preprocess
from fusioncam.report.segmentation_pictures import OUTLINE_COLOR
from tests.support.segmentation_models import QuadrantNet


@pytest.mark.slow
def test_explain_writes_segmentation_outputs(tmp_path, capsys) -> None:
    model = QuadrantNet().eval()
    rgb = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = preprocess(rgb, (32, 32))[None]
    with torch.no_grad():
        mean = float(model.top_left_mean(torch.from_numpy(image)))
    model.alpha, model.beta = 20.0 / mean, mean / 2
    bundle = tmp_path / "q.fcam"
    export_torch_segmentation(model, "target", bundle, input_size=(32, 32), class_names=["background", "top-left"])
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    code = main(["explain", str(photo), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", "gradcam,fusion", "--target", "top-left", "--region", "0,0,16,16"])
    assert code == 0, capsys.readouterr().err
    record = json.loads((out / "results.json").read_text())["images"][0]
    assert record["class_name"] == "top-left" and record["region"]["area"] == 256.0
    with Explainer(bundle, device="cpu") as explainer:
        want = explainer.explain(image, targets=1, regions=(0, 0, 16, 16), methods=("gradcam", "scorecam", "fusion"))
    assert abs(record["probability"] - float(want.probabilities[0])) <= 1e-6
    for method in ("gradcam", "fusion"):
        np.testing.assert_allclose(np.load(out / record["files"][f"{method}_npy"]), want.maps[method][0], atol=1e-6)
    overlay = cv2.cvtColor(cv2.imread(str(out / record["files"]["fusion_overlay"])), cv2.COLOR_BGR2RGB)
    outlined = (overlay == OUTLINE_COLOR).all(axis=2)  # the box, at the photo's 64x64: its border near row/col 31
    assert outlined[:32, 30:34].any() and outlined[30:34, :32].any() and not outlined[40:, 40:].any()
    assert (out / record["files"]["panel"]).is_file()


def test_region_option_is_refused_for_a_classifier(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                     torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    from fusioncam import export_torch

    export_torch(classifier, "1", tmp_path / "c.fcam", input_size=(16, 16))
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((16, 16, 3), np.uint8))
    code = main(["explain", str(photo), "--model", str(tmp_path / "c.fcam"), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--region", "all"])
    assert code == 2 and "--region applies to segmentation bundles only" in capsys.readouterr().err


def test_export_segmentation_onnx_from_the_command_line(tmp_path, capsys) -> None:
    import io

    from fusioncam.bundle import load_bundle

    model = QuadrantNet().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores"], dynamic_axes={"image": {0: "n"}})
    (tmp_path / "q.onnx").write_bytes(buffer.getvalue())
    assert main(["export", str(tmp_path / "q.onnx"), "--out", str(tmp_path / "q.fcam"), "--segmentation"]) == 0
    bundle = load_bundle(tmp_path / "q.fcam")
    assert bundle.manifest.task == "segmentation" and bundle.manifest.channels == 4  # automatic: the top-left slice
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(image, targets=1, regions="all", methods="gradcam")
    with torch.no_grad():
        np.testing.assert_allclose(result.logits, model(torch.from_numpy(image)).numpy(), atol=1e-5)
    code = main(["export", "resnet18", "--out", str(tmp_path / "r.fcam"), "--segmentation"])
    assert code == 2 and "--segmentation exports .onnx files" in capsys.readouterr().err
