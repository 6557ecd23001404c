"""A one-channel sigmoid map (DBNet's text probability) exported with task='segmentation' becomes the two classes
[0, y] (binary_map.py): the scorer's region probability is the mean of the shipped sigmoid over the region, the
predicted region is sigmoid > 0.5, and dS/dA (S = the pre-sigmoid logit summed over the region) equals torch
autograd; a softmax over the single channel would have scored every region 1."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import torch

from fusioncam.export.segmentation_export import export_onnx_segmentation
from tests.support.onnx_graphs import assert_close
from tests.support.segmentation_reference import box_mask, region_array

SIZE = (32, 48)


class TinyBinaryMap(torch.nn.Module):
    """conv + relu (the target) -> ConvTranspose 2x2 stride 2 -> sigmoid: DBNet's head in miniature."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.up = torch.nn.ConvTranspose2d(6, 1, 2, stride=2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))

    def forward(self, x: torch.Tensor):
        features = self.features(x)
        return torch.sigmoid(self.up(features)), features


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_one_channel_sigmoid_map_is_explained_as_foreground_of_two_classes(tmp_path) -> None:
    model = TinyBinaryMap().eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, *SIZE),), buffer, dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["probability", "features"],
                      dynamic_axes={"image": {0: "batch"}})
    (tmp_path / "binary.onnx").write_bytes(buffer.getvalue())
    result = export_onnx_segmentation(tmp_path / "binary.onnx", tmp_path / "binary.fcam", target_layer="features")
    assert result.bundle.manifest.num_classes == 2
    assert any("binary map" in note for note in result.notes)

    images = np.random.default_rng(4).standard_normal((3, 3, *SIZE)).astype(np.float32)
    regions = [None, box_mask(SIZE, (4, 6, 30, 20)), np.ones(SIZE, np.float32)]
    got = dict(zip(["logits", "activations", "gradients", "target_used", "region_weights"],
                   _session(result.bundle.explain_path).run(None, {"input": images, "target": np.array([1, 1, 0]),
                                                                   "region": region_array(regions, SIZE)})))
    x = torch.from_numpy(images)
    features = model.features(x)
    logit = model.up(features)[:, 0]  # [N, H, W], pre-sigmoid
    probability = torch.sigmoid(logit).detach()
    predicted = (probability > 0.5).float()
    assert 0 < float(predicted[0].sum()) < predicted[0].numel()  # a real partial region
    weights = torch.stack([predicted[0], torch.from_numpy(regions[1]), torch.from_numpy(regions[2])])
    np.testing.assert_array_equal(got["region_weights"], weights.numpy())
    assert_close(got["logits"][:, 1], logit.detach().numpy(), what="foreground logit")
    assert np.all(got["logits"][:, 0] == 0)

    score = (logit[:2] * weights[:2]).sum()  # rows 0 and 1 explain the foreground; row 2 the background (score 0)
    (grads,) = torch.autograd.grad(score, features)
    for i, what in enumerate(("predicted region", "box")):
        assert_close(got["gradients"][i], grads[i].numpy(), what=f"dS/dA, {what}")
    assert np.all(got["gradients"][2] == 0)  # the background's score is the constant 0

    (scored,) = _session(result.bundle.scorer_path).run(
        ["score"], {"input": images, "target": np.array([1, 1, 0]), "region_weights": got["region_weights"]})
    want = [(probability[i] * weights[i]).sum() / weights[i].sum() for i in range(2)]
    want.append(((1 - probability[2]) * weights[2]).sum() / weights[2].sum())
    assert_close(scored, torch.stack(want).numpy(), what="region probability")
    assert 0.05 < float(scored[1]) < 0.95  # not the constant 1 a one-class softmax gives
