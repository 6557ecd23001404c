"""Grad-CAM++, XGrad-CAM, Group-CAM and Union-CAM (CPU path) against the independent eager reference, plus their kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fusioncam
from fusioncam.graph_names import TARGET
from fusioncam.kernels import numpy_kernels as K
from fusioncam.kernels.array_math import channel_percentiles, group_bounds
from fusioncam.runtime.methods import METHODS
from tests.support.sharp_resnet18 import SIZE, sharp_resnet18, sharp_resnet18_bundle
from tests.support.torch_reference import module_by_path
from tests.support.torch_reference_methods import Pass, gaussian_blur, reference_methods, xgradcam
from tests.support.parity import GRADIENT_METHODS, assert_methods_match, max_diff

MAP_TOLERANCE = 1e-4
BETA_TOLERANCE = 1e-5
EFFICIENTNET_LAYER = "_blocks.15"






@pytest.fixture(scope="module")
def efficientnet(efficientnet_model, efficientnet_bundle):
    """The session's EfficientNet-Lite0 (tests/conftest.py), its `_blocks.15` module and a CPU Explainer of its bundle."""
    layer = module_by_path(efficientnet_model, EFFICIENTNET_LAYER)
    return efficientnet_model, layer, fusioncam.Explainer(efficientnet_bundle, device="cpu", batch_size=64)


@pytest.mark.slow
def test_gradient_weight_methods_on_efficientnet_lite0(efficientnet, sample_batch):
    model, layer, explainer = efficientnet
    names, images = sample_batch
    explanation = explainer.explain(images, methods=("gradcam",) + GRADIENT_METHODS)
    assert explanation.timings["scorer_forwards_run"] == explanation.timings["method_forwards_run"] == 0
    assert explanation.fusion is None and explanation.scorecam is None and explanation.betas is None
    graph = explainer.backend.explain(images, {TARGET: np.full(len(images), -1, dtype=np.int64)})
    for i, name in enumerate(names):
        reference = reference_methods(model, layer, torch.from_numpy(images[i]), methods=GRADIENT_METHODS)
        assert max_diff(explanation.maps["gradcam++"][i], reference["gradcam++"]) <= MAP_TOLERANCE, name
        # XGrad-CAM divides by sum_ab A_k, which nearly cancels for some channels of this un-activated layer
        # (motorcycle: 0.05 over values up to 15): that amplifies the ~1.5e-6 relative float32 difference between ORT's
        # and PyTorch's activations to ~2e-4 in the map. So: the arithmetic to 1e-5 on ORT's own A and G, the
        # activations to float32 noise, and the end-to-end map to 5e-4 (resnet18's post-ReLU layer is held to 1e-4).
        run = Pass(None, None, torch.from_numpy(images[i]), torch.from_numpy(graph["activations"][i]).double(),
                   torch.from_numpy(graph["gradients"][i]).double(), reference["class"])
        assert max_diff(explanation.maps["xgradcam"][i], xgradcam(run)) <= 1e-5, name
        assert max_diff(explanation.maps["xgradcam"][i], reference["xgradcam"]) <= 5e-4, name
        assert int(explanation.classes[i]) == reference["class"]


@pytest.mark.slow
def test_sweep_methods_on_efficientnet_lite0_chelsea(efficientnet, sample_batch, efficientnet_chelsea_reference):
    """Group-CAM, Union-CAM, Score-CAM and Fusion-CAM of chelsea against the eager reference (320 + 32 PyTorch
    forwards, the session fixture shared with test_runtime_parity, which compares its Fusion-CAM with the default
    five-image explanation). Batches of two images with every method are checked on ResNet-18 in
    test_all_methods_on_random_resnet18."""
    _, _, explainer = efficientnet
    names, images = sample_batch
    chosen = [names.index("chelsea")]
    explanation = explainer.explain(images[chosen], methods=("scorecam", "groupcam", "unioncam", "fusion"))
    assert_methods_match(explanation, 0, efficientnet_chelsea_reference)
    assert explanation.group_scores.shape == (1, 32)  # K = 320: 32 groups of 10


@pytest.mark.slow
def test_all_methods_on_random_resnet18():
    """Every method on the seeded ResNet-18 with a sharpened head (well-conditioned betas), its `layer4` bundle
    shared with test_runtime_parity and test_skip_constant (tests/support/sharp_resnet18.py)."""
    model = sharp_resnet18()
    images = np.random.default_rng(3).standard_normal((2, 3, *SIZE)).astype(np.float32)
    targets = [None, 590]  # image 0's top class, image 1's second class: Union-CAM keeps L_reg for image 0 and L_dr for image 1
    explanation = fusioncam.Explainer(sharp_resnet18_bundle(), device="cpu", batch_size=100).explain(images, targets,
                                                                                                   METHODS)
    assert tuple(explanation.maps) == METHODS
    for i, target in enumerate(targets):
        reference = reference_methods(model, model.layer4, torch.from_numpy(images[i]), target)
        assert_methods_match(explanation, i, reference)
        assert max_diff(explanation.maps["gradcam"][i], reference["fusion_reference"]["gradcam"]) <= MAP_TOLERANCE
        assert max_diff(explanation.maps["fusion"][i], explanation.fusion[i]) == 0
    assert explanation.union_kept_combined.tolist() == [False, True]


class SmallNet(torch.nn.Module):
    """conv (K channels, stride 2) -> relu -> pool -> linear: a cheap model with any channel count."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        torch.manual_seed(channels)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, stride=2, padding=1), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(channels, 10)
        with torch.no_grad():
            self.fc.weight.mul_(8.0)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@pytest.mark.parametrize("channels,groups", [(40, 20), (20, 20), (100, 25)])
def test_group_cam_when_channels_do_not_divide_by_32(tmp_path, channels, groups):
    model = SmallNet(channels).eval()
    fusioncam.export_torch(model, "features", tmp_path / "s.fcam", input_size=(32, 32))
    images = np.random.default_rng(channels).standard_normal((2, 3, 32, 32)).astype(np.float32)
    explanation = fusioncam.Explainer(tmp_path / "s.fcam", device="cpu").explain(images, methods=METHODS)
    assert explanation.group_scores.shape == (2, groups)
    for i in range(2):
        assert_methods_match(explanation, i, reference_methods(model, model.features, torch.from_numpy(images[i])))


# ---------------------------------------------------------------- kernels


@pytest.mark.parametrize("channels", [1, 20, 31, 32, 33, 40, 100, 320, 512, 2048])
def test_group_bounds_follow_torch_chunk(channels):
    chunks = torch.chunk(torch.arange(channels), 32)
    assert group_bounds(channels, 32) == [(int(c[0]), int(c[-1]) + 1) for c in chunks]


@pytest.mark.parametrize("hw", [(64, 64), (16, 16), (5, 7), (1, 9), (30, 2)])
def test_gaussian_blur_is_reflect_101_with_opencv_taps(hw):
    images = np.random.default_rng(1).standard_normal((2, 3, *hw)).astype(np.float32)
    blurred = K.gaussian_blurred_images(images, 51, 50.0)
    for n in range(2):
        assert max_diff(blurred[n], gaussian_blur(torch.from_numpy(images[n]))) <= 1e-6


def test_channel_percentiles_are_numpy_percentiles_bit_for_bit():
    values = np.random.default_rng(2).standard_normal((2, 5, 7, 7)).astype(np.float32)
    values[0, 1] = 0.25  # constant channel
    values[1, 2] = np.round(values[1, 2])  # ties
    for theta in (0.0, 10.0, 37.5, 100.0):
        expected = np.percentile(values.reshape(2, 5, -1), theta, axis=2)
        assert np.array_equal(channel_percentiles(values, theta), expected.astype(np.float32))


def test_union_gradient_map_drops_low_gradients_per_channel():
    acts = np.random.default_rng(3).random((1, 3, 4, 5)).astype(np.float32)
    grads = np.random.default_rng(4).standard_normal((1, 3, 4, 5)).astype(np.float32)
    grads[0, 2] = -1.0  # no positive gradient: the channel adds nothing (no 0/0)
    expected = np.zeros((4, 5))
    for k in range(2):
        g = grads[0, k].astype(np.float64)
        kept = np.maximum(np.where(g < np.percentile(g, 10), 0, g), 0)
        expected += kept * acts[0, k] / kept.sum()
    assert max_diff(K.union_gradient_map(acts, grads, 10.0)[0], expected) <= 1e-6


def independent_upsampled(maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """[..., h, w] -> [..., H, W] float64 by torch's bilinear resize (half-pixel centres, no antialias)."""
    flat = torch.from_numpy(np.asarray(maps, dtype=np.float64).reshape(-1, 1, *maps.shape[-2:]))
    up = torch.nn.functional.interpolate(flat, size=out_hw, mode="bilinear", align_corners=False)
    return up.numpy().reshape(*maps.shape[:-2], *out_hw)


def independent_min_max_rescale(maps: np.ndarray) -> np.ndarray:
    """Each [H, W] map minus its min, divided by its (shifted) max when that is > 0; a constant map becomes zeros."""
    low = maps.min(axis=(-2, -1), keepdims=True)
    top = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.where(top > 0, (maps - low) / np.where(top > 0, top, 1.0), 0.0)


def test_group_blends_and_weighted_masks():
    rng = np.random.default_rng(5)
    images, blurred = rng.standard_normal((2, 2, 3, 12, 10)).astype(np.float32)
    group_maps = rng.random((2, 3, 3, 2)).astype(np.float32)
    group_maps[1, 1] = 0.5  # constant: M = 0
    mins, maxs = K.upsampled_min_max(group_maps, (12, 10))
    upsampled = independent_upsampled(group_maps, (12, 10))  # reference built without the library's kernels
    assert max_diff(mins, upsampled.min(axis=(2, 3))) <= 1e-6 and max_diff(maxs, upsampled.max(axis=(2, 3))) <= 1e-6
    masks = independent_min_max_rescale(upsampled)
    assert not masks[1, 1].any() and masks[0].max() == 1.0
    out = np.full((6, 3, 12, 10), 9.0, dtype=np.float32)
    K.write_group_blended_inputs(images, blurred, group_maps, mins, maxs, np.array([1, 0, 1, 1]),
                                 np.array([0, 2, -1, 1]), out, start=1)
    assert np.all(out[0] == 9.0) and np.all(out[5] == 9.0)
    assert max_diff(out[1], masks[1, 0] * images[1] + (1 - masks[1, 0]) * blurred[1]) <= 1e-6
    assert max_diff(out[2], masks[0, 2] * images[0] + (1 - masks[0, 2]) * blurred[0]) <= 1e-6
    assert np.array_equal(out[3], blurred[1]) and np.array_equal(out[4], blurred[1])
    scores = np.array([[0.5, 0.0, 2.0], [1.0, 3.0, 0.25]])
    expected = np.einsum("ng,nghw->nhw", scores, masks.astype(np.float64))
    assert max_diff(K.weighted_group_masks(group_maps, mins, maxs, scores, (12, 10)), expected) <= 1e-6
