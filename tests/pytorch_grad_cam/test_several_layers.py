"""Several target layers on fusioncam.pytorch_grad_cam weighed as pytorch-grad-cam weighs them: each layer's map
scaled at its own resolution, then upsampled, then averaged. The rescaling of the engine's maps
(runtime/layer_aggregation.py) against the direct computation from low-resolution maps, and every class both
libraries have against pytorch-grad-cam 1.5.7 on ResNet-18 layer3 + layer4 (<= 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest

from fusioncam.kernels import numpy_kernels
from fusioncam.runtime.layer_aggregation import scaled_before_upsampling
from fusioncam.pytorch_grad_cam.utils.image import scale_cam_image
from tests.support.small_cnn import max_diff


@pytest.mark.parametrize("low_hw, out_hw", [((7, 7), (224, 224)), ((4, 6), (64, 96)), ((7, 5), (50, 33)),
                                            ((1, 3), (8, 24))])
def test_scaling_at_the_layer_resolution_is_recovered_from_the_engine_map(low_hw, out_hw):
    rng = np.random.default_rng(sum(low_hw) + sum(out_hw))
    low = rng.standard_normal((3, *low_hw)).astype(np.float32)
    low[2] = np.abs(low[2]) * 0.1 + 5.0  # a map far from 0 whose min-max scaling does most of the work
    engine = numpy_kernels.relu_upsample_normalize(low, out_hw)  # norm(up(relu(low))), as the engine ends maps
    expected = scale_cam_image(np.maximum(low, 0), (out_hw[1], out_hw[0]))  # pytorch-grad-cam's per-layer map
    assert max_diff(engine, expected) > 1e-2 or low_hw == (1, 3)  # the two scalings differ: the solve is tested
    assert max_diff(scaled_before_upsampling(engine, low_hw), expected) <= 1e-4


def test_an_all_zero_layer_map_stays_zero():
    engine = numpy_kernels.relu_upsample_normalize(-np.ones((1, 4, 4), np.float32), (32, 32))
    np.testing.assert_array_equal(scaled_before_upsampling(engine, (4, 4)), np.zeros((1, 32, 32), np.float32))


torch = pytest.importorskip("torch")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")

import fusioncam.pytorch_grad_cam as drop_in  # noqa: E402
from fusioncam.runtime.methods.registry import REGISTRY  # noqa: E402
from fusioncam.runtime.several_layers import one_layer_methods  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

SHARED = [name for name, cls in drop_in.CLASS_METHODS.items() if hasattr(pytorch_grad_cam, name)
          and cls.method in REGISTRY and name not in ("FullGrad",)]  # FullGrad ignores target_layers in both


@pytest.fixture(scope="module")
def resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


def test_every_shared_class_is_covered():
    assert {"ScoreCAM", "AblationCAM", "EigenCAM", "KPCA_CAM", "FinerCAM", "GradCAM"} <= set(SHARED)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARED)
def test_resnet18_layer3_and_layer4_match_the_library(resnet18, name):
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32)
    targets = None if name == "FinerCAM" else [ClassifierOutputTarget(3)]
    layers = [resnet18.layer3, resnet18.layer4]
    with getattr(pytorch_grad_cam, name)(model=resnet18, target_layers=layers) as cam:
        cam.batch_size = 128  # masked images per forward (Score-CAM): the same map, fewer forwards
        theirs = cam(input_tensor=torch.from_numpy(x), targets=targets)
    with getattr(drop_in, name)(model=resnet18, target_layers=layers, device="cpu") as cam:
        ours = cam(input_tensor=torch.from_numpy(x), targets=targets)
        per_layer = [np.maximum(maps[cam.method], 0) for e in cam.last_explanations
                     for maps in (e.layer_maps.values() if e.layer_maps else [e.maps])]
        # one bundle (one Explainer, one explain pass per call) for both layers, but where a graph is derived from one
        # layer's (FullGrad's, ShapleyCAM's: one_layer_methods): one per layer
        assert len(cam._explainers) == (2 if cam.method in one_layer_methods() else 1), name
    assert theirs.max() > 0.99 and ours.dtype == np.float32 and ours.shape == theirs.shape
    # ShapleyCAM (Grad-CAM's map here: H A is 0 on ResNet-18): on this image the plain mean of its final maps already
    # equals the library's (9.5e-7 measured), so only the parity below is asserted for it
    if per_layer and name != "ShapleyCAM":  # the engine's maps (explain-pass methods form their layer maps themselves)
        plain = scale_cam_image(np.mean(per_layer, axis=0))  # the mean of the final maps: not the library's
        assert max_diff(plain, theirs) > 5e-4, name  # five times the tolerance below: the weighing is tested
    assert max_diff(ours, theirs) <= 1e-4, name
