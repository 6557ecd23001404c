"""`fusioncam export`, export_onnx and export_torch find the task from the model's class scores, or take it."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import fusioncam
from fusioncam.bundle import load_bundle
from fusioncam.cli.main import main
from fusioncam.errors import InputError
from fusioncam.export.task_routing import checked_task, onnx_task
from tests.support.segmentation_models import QuadrantNet


@pytest.fixture(scope="module")
def quadrant_onnx(tmp_path_factory):
    model = QuadrantNet().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["scores"], dynamic_axes={"image": {0: "n"}})
    path = tmp_path_factory.mktemp("routing") / "q.onnx"
    path.write_bytes(buffer.getvalue())
    return model, path


def test_cli_export_finds_a_segmentation_model_and_takes_task(quadrant_onnx, tmp_path, capsys) -> None:
    model, path = quadrant_onnx
    assert onnx_task(path) == "segmentation"
    assert main(["export", str(path), "--out", str(tmp_path / "q.fcam")]) == 0
    bundle = load_bundle(tmp_path / "q.fcam")
    assert bundle.manifest.task == "segmentation" and bundle.manifest.output_size == (32, 32)
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        prediction = explainer.predict(image)
    with torch.no_grad():
        np.testing.assert_allclose(prediction.logits, model(torch.from_numpy(image)).numpy(), atol=1e-5)
    assert np.array_equal(prediction.classes, prediction.logits.argmax(axis=1))
    code = main(["export", str(path), "--out", str(tmp_path / "c.fcam"), "--task", "classification"])
    assert code == 2 and "export it with task='segmentation'" in capsys.readouterr().err


def test_classifier_prediction_is_the_models(tmp_path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    result = fusioncam.export_torch(model, "1", tmp_path / "c.fcam", input_size=(16, 16))
    assert result.bundle.manifest.task == "classification"
    images = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with fusioncam.Explainer(result, device="cpu", batch_size=2) as explainer:  # 3 scorer runs
        prediction = explainer.predict(images)
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    np.testing.assert_allclose(prediction.logits, logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(prediction.probabilities, torch.softmax(logits.double(), 1).numpy(), atol=1e-6)
    assert prediction.classes.tolist() == logits.argmax(1).tolist()


def test_unknown_task_is_refused_by_name() -> None:
    with pytest.raises(InputError, match="task='keypoints' is not one fusioncam exports.*segmentation, detection"):
        checked_task("keypoints")
