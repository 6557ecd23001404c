"""AblationCAM and ReciproCAM on the head graph: parity with pytorch-grad-cam 1.5.7's AblationCAM and with an eager
torch ReciproCAM written from the paper (per-position mosaic, softmax of the target class); bundles without a head
graph are refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fusioncam import Explainer
from fusioncam.errors import BundleError
from fusioncam.export import export_torch


class CornerOff(nn.Module):
    """Zeroes the top-left 4 x 4 positions of an 8 x 8 map: positions whose mosaics are all zeros."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.ones(1, 1, 8, 8)
        mask[..., :4, :4] = 0
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


class SmallNet(nn.Module):
    """Two conv stages (the second is the target), global pooling, a linear head; some channels are dead (all zero)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(8, 12, 3, stride=4, padding=1), nn.ReLU(), CornerOff())
        with torch.no_grad():
            self.features[0].bias[:3] = -100.0  # channels 0-2 never fire: the constant-channel skip applies
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
        with torch.no_grad():
            self.head[2].weight *= 30.0  # class probabilities that differ clearly between positions

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    model = SmallNet().eval()
    bundle = export_torch(model, "features", tmp_path_factory.mktemp("head") / "small.fcam", input_size=(32, 32),
                          mean=(0, 0, 0), std=(1, 1, 1)).bundle
    images = torch.rand(3, 3, 32, 32)
    return model, bundle, images


def _explain(bundle, images, method, classes, compat=None, skip=True):
    with Explainer(bundle, device="cpu", compat=compat, skip_constant_channels=skip) as explainer:
        return explainer.explain(images.numpy(), targets=classes, methods=[method]).maps[method]


@pytest.mark.parametrize("skip", [True, False])
def test_ablationcam_equals_pytorch_grad_cam(small, skip):
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, bundle, images = small
    classes = [1, 4, 2]
    with AblationCAM(model=model, target_layers=[model.features]) as cam:
        expected = cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])
    got = _explain(bundle, images, "ablationcam", classes, compat="pytorch-grad-cam", skip=skip)
    assert float(np.abs(got - expected).max()) < 1e-4 and float(expected.max()) > 0.99  # a real map, not zeros


GAUSSIAN = torch.tensor([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]])


def _reciprocam_reference(model: SmallNet, images: torch.Tensor, classes: list[int], gaussian: bool) -> np.ndarray:
    """Recipro-CAM from the paper, eagerly: for each position, the feature map kept there alone (or its 3 x 3
    neighbourhood weighted by the paper's Gaussian) goes through the head; the softmax probability of the class per
    position is the map; min-max normalised, bilinearly upsampled."""
    with torch.no_grad():
        feature = model.features(model.stem(images))
        n, k, h, w = feature.shape
        maps = []
        for i in range(n):
            mosaic = torch.zeros(h * w, k, h, w)
            for p in range(h * w):
                y, x = p // w, p % w
                if not gaussian:
                    mosaic[p, :, y, x] = feature[i, :, y, x]
                    continue
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if 0 <= y + dy < h and 0 <= x + dx < w:
                            mosaic[p, :, y + dy, x + dx] = feature[i, :, y + dy, x + dx] * GAUSSIAN[dy + 1, dx + 1]
            scores = torch.softmax(model.head(mosaic), dim=1)[:, classes[i]].reshape(1, 1, h, w)
            up = F.interpolate(scores, size=images.shape[2:], mode="bilinear", align_corners=False)[0, 0]
            up = up - up.min()
            maps.append((up / up.max()).numpy())
    return np.stack(maps)


@pytest.mark.parametrize("method", ["reciprocam", "reciprocam-gaussian"])
@pytest.mark.parametrize("skip", [True, False])
def test_reciprocam_equals_eager_reference(small, skip, method):
    model, bundle, images = small
    classes = [0, 3, 4]
    expected = _reciprocam_reference(model, images, classes, gaussian=method.endswith("gaussian"))
    got = _explain(bundle, images, method, classes, skip=skip)
    assert float(np.abs(got - expected).max()) < 1e-4 and float(expected.std()) > 0.05  # a map with contrast


class SkipNet(nn.Module):
    """A residual block: the conv's output is not the only path from the image to the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)) + x.mean(dim=1, keepdim=True))


def test_bundle_without_head_graph_is_refused(tmp_path):
    result = export_torch(SkipNet().eval(), "conv", tmp_path / "skip.fcam", input_size=(16, 16))
    assert result.bundle.head_path is None
    assert "no head graph" in result.describe() and "bypass" in result.describe()
    with Explainer(result.bundle, device="cpu") as explainer:
        with pytest.raises(BundleError, match="no head graph.*re-export"):
            explainer.explain(np.zeros((1, 3, 16, 16), np.float32), methods=["ablationcam"])
        assert "gradcam" in explainer.explain(np.zeros((1, 3, 16, 16), np.float32), methods=["gradcam"]).maps


@pytest.mark.slow
def test_ablationcam_resnet18_equals_pytorch_grad_cam(tmp_path):
    import torchvision
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(1, 3, 64, 64)
    with AblationCAM(model=model, target_layers=[model.layer4], batch_size=128) as cam:
        expected = cam(input_tensor=images, targets=[ClassifierOutputTarget(3)])
    bundle = export_torch(model, "layer4", tmp_path / "r18.fcam", input_size=(64, 64), mean=(0, 0, 0),
                          std=(1, 1, 1)).bundle
    got = _explain(bundle, images, "ablationcam", [3], compat="pytorch-grad-cam")
    assert float(np.abs(got - expected).max()) < 1e-4


@pytest.mark.parametrize("method", ["ablationcam", "reciprocam", "reciprocam-gaussian"])
def test_known_answers_run_no_head_forward(small, monkeypatch, method):
    """Channels that are all zero (AblationCAM; 0-2 are dead) and mosaics that keep only zeros (ReciproCAM: the dead
    4 x 4 corner's positions, or those whose Gaussian neighbourhood lies inside it, share one all-zeros forward) cost
    no head forward of their own."""
    from fusioncam.runtime.head_session import HeadSession

    model, bundle, images = small
    with torch.no_grad():
        live = model.features(model.stem(images)) != 0  # [N, K, h, w]
    if method == "ablationcam":
        expected = int(live.any(dim=(2, 3)).sum())
        assert expected <= 3 * (12 - 3)
    else:
        kernel = torch.ones(1, 1, 3, 3) if method.endswith("gaussian") else torch.ones(1, 1, 1, 1)
        reach = F.conv2d(live.any(dim=1, keepdim=True).float(), kernel, padding=kernel.shape[-1] // 2) > 0
        per_image = reach.flatten(1).sum(dim=1)
        expected = int(per_image.sum() + (per_image < 64).sum())  # live mosaics, and one all-zeros row per image
        assert expected <= 3 * (64 - (9 if method.endswith("gaussian") else 16) + 1)
    rows = []
    real = HeadSession.logits
    monkeypatch.setattr(HeadSession, "logits", lambda self, batch: rows.append(len(batch)) or real(self, batch))
    _explain(bundle, images, method, [0, 1, 2])
    assert sum(rows) == expected


def test_cli_explain_writes_the_head_graph_maps(tmp_path):
    """`fusioncam explain --methods ablationcam,reciprocam,reciprocam-gaussian` writes the Explainer's maps."""
    import json

    from fusioncam.cli.main import main
    from fusioncam.images import preprocess, read_rgb
    from tests.support.safety_helpers import tiny_bundle, write_images

    bundle = tiny_bundle(tmp_path / "bundle")
    image = write_images(tmp_path / "in", ["a.png"])[0]
    methods = "ablationcam,reciprocam,reciprocam-gaussian"
    assert main(["explain", str(image), "--model", str(bundle), "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--methods", methods]) == 0
    record = json.loads((tmp_path / "out" / "results.json").read_text())["images"][0]
    with Explainer(bundle, device="cpu") as explainer:
        manifest = explainer.bundle.manifest
        alone = explainer.explain(preprocess(read_rgb(image), manifest.input_size, manifest.mean, manifest.std)[None],
                                  methods=methods)
    for method in methods.split(","):
        assert float(alone.maps[method][0].max()) > 0.99
        np.testing.assert_allclose(np.load(tmp_path / "out" / record["files"][f"{method}_npy"]),
                                   alone.maps[method][0], atol=1e-6)
