"""compat="pytorch-grad-cam": Grad-CAM++ and Score-CAM equal pytorch-grad-cam's own maps (the library itself, same
weights, layer, images and targets, <= 1e-4), the default still differs from them as documented, and on a model with
an in-place ReLU after the target (DenseNet) pytorch-grad-cam pairs post-ReLU activations with pre-ReLU gradients."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")

import fusioncam  # noqa: E402
from fusioncam import FusionCAM  # noqa: E402
from fusioncam.cli.main import main  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.kernels import numpy_kernels  # noqa: E402
from fusioncam.kernels.pytorch_grad_cam_math import (  # noqa: E402
    aligned_min_max,
    aligned_upsample,
    plus_plus_weights,
    write_aligned_channel_masked_inputs,
)
from fusioncam.runtime.device_select import cuda_unavailable_reason  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from tests.support.autograd_reference import run_explain_graph  # noqa: E402
from tests.support.small_cnn import SmallNet, images, max_diff  # noqa: E402

PGC = "pytorch-grad-cam"
LIBRARY_CLASSES = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "scorecam": "ScoreCAM"}
NO_GPU = cuda_unavailable_reason()


def library_maps(model, layer, x: np.ndarray, targets: list[int], methods) -> dict[str, np.ndarray]:
    """pytorch-grad-cam's own maps [N, H, W] for each method."""
    maps = {}
    for method in methods:
        with getattr(pytorch_grad_cam, LIBRARY_CLASSES[method])(model=model, target_layers=[layer]) as cam:
            cam.batch_size = 64  # ScoreCAM's batch of masked inputs (its maps do not depend on it)
            maps[method] = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in targets])
    return maps


def both_variants(bundle, x: np.ndarray, targets: list[int], methods) -> dict:
    """fusioncam's maps with the default arithmetic (None) and with compat="pytorch-grad-cam"."""
    out = {}
    for compat in (None, PGC):
        with fusioncam.Explainer(bundle, device="cpu", batch_size=16, compat=compat) as explainer:
            out[compat] = explainer.explain(x, targets=targets, methods=methods).maps
    return out


# ---------------------------------------------------------------- the arithmetic, against the library's functions


def test_plus_plus_weights_equal_the_library_function():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    grads = (rng.standard_normal((2, 6, 5, 5)) * 1e-3).astype(np.float32)
    grads[0, 1] = 0.0  # no gradient: alpha's 0/eps and np.where(grads != 0, ...)
    theirs = pytorch_grad_cam.GradCAMPlusPlus.get_cam_weights(None, None, None, None, acts, grads)
    ours = plus_plus_weights(acts, grads)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-12)
    # The default (the authors', no epsilon) differs: with gradients ~1e-3, g^2 ~ 1e-6 is the epsilon's size.
    default = numpy_kernels.gradcam_plus_plus_weights(acts, grads)
    assert max_diff(default, theirs) > 0.1 * np.abs(theirs).max()


@pytest.mark.parametrize("in_hw,out_hw", [((7, 7), (224, 224)), ((2, 3), (64, 45)), ((1, 4), (5, 4))])
def test_aligned_upsample_and_masks_equal_torch_align_corners_true(in_hw, out_hw):
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((2, 3, *in_hw)).astype(np.float32)
    acts[1, 2] = 0.0  # a dead (all-zero) channel: its mask is 0 in both
    upsampled = torch.nn.UpsamplingBilinear2d(size=out_hw)(torch.from_numpy(acts))  # pytorch-grad-cam's upsampling
    ours = aligned_upsample(acts.reshape(6, *in_hw), out_hw).reshape(upsampled.shape)
    np.testing.assert_allclose(ours, upsampled.numpy(), rtol=0, atol=1e-6)
    flat = upsampled.view(2, 3, -1)
    mins, maxs = flat.min(dim=-1)[0], flat.max(dim=-1)[0]
    our_mins, our_maxs = aligned_min_max(acts, out_hw)
    np.testing.assert_allclose(our_mins, mins.numpy(), atol=1e-6)
    np.testing.assert_allclose(our_maxs, maxs.numpy(), atol=1e-6)
    # pytorch-grad-cam's ScoreCAM inputs: x * (up - min) / (max - min + 1e-8)
    x = rng.standard_normal((2, 3, *out_hw)).astype(np.float32)
    masks = (upsampled - mins[:, :, None, None]) / (maxs - mins + 1e-8)[:, :, None, None]
    theirs = (torch.from_numpy(x)[:, None] * masks[:, :, None]).numpy()
    image_index, channel_index = np.repeat(np.arange(2), 3), np.tile(np.arange(3), 2)
    out = np.full((8, 3, *out_hw), np.nan, dtype=np.float32)
    write_aligned_channel_masked_inputs(x, acts, our_mins, our_maxs, image_index, channel_index, out, start=1)
    np.testing.assert_allclose(out[1:7], theirs.reshape(6, 3, *out_hw), rtol=0, atol=1e-5)
    assert np.isnan(out[0]).all() and np.isnan(out[7]).all()


# ---------------------------------------------------------------- whole maps, against the library itself


@pytest.fixture(scope="module")
def small_net(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallNet().eval()
    bundle = tmp_path_factory.mktemp("small") / "small.bundle"
    fusioncam.export_torch(model, "features.2", bundle, input_size=(32, 32))  # the conv output: signed activations
    return model, bundle


def test_compat_maps_equal_pytorch_grad_cam_on_a_small_cnn(small_net):
    model, bundle = small_net
    x, targets = images(2, 32), [1, 3]
    methods = ("gradcam", "gradcam++", "scorecam")
    theirs = library_maps(model, model.features[2], x, targets, methods)
    ours = both_variants(bundle, x, targets, methods)
    for method in methods:
        assert max_diff(ours[PGC][method], theirs[method]) <= 1e-4, method
    # Grad-CAM is the same either way; Grad-CAM++ and Score-CAM differ by default (the epsilon, the masks' corners,
    # the ReLU after the upsampling on these signed activations), and the option removes exactly that.
    assert max_diff(ours[None]["gradcam"], theirs["gradcam"]) <= 1e-4
    assert max_diff(ours[None]["gradcam++"], theirs["gradcam++"]) > 1e-3
    assert max_diff(ours[None]["scorecam"], theirs["scorecam"]) > 1e-3


@pytest.mark.slow
def test_compat_maps_equal_pytorch_grad_cam_on_resnet18(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    bundle = tmp_path / "resnet18.bundle"
    fusioncam.export_torch(model, "layer3", bundle, input_size=(64, 64))  # K=256, 4x4
    x, targets = images(1, 64, seed=3), [2]
    methods = ("gradcam++", "scorecam")
    theirs = library_maps(model, model.layer3, x, targets, methods)
    ours = both_variants(bundle, x, targets, methods)
    for method in methods:
        assert max_diff(ours[PGC][method], theirs[method]) <= 1e-4, method
        assert max_diff(ours[None][method], theirs[method]) > 1e-3, method


class InplaceReluNet(torch.nn.Module):
    """A convolution and batch norm (the target), then an in-place ReLU module, pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4, padding=1), torch.nn.BatchNorm2d(8),
                                            torch.nn.ReLU(inplace=True))
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def tiny_densenet():
    """torchvision's DenseNet, tiny: its forward applies F.relu(features, inplace=True) after `features`."""
    return torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                                       num_classes=5)


@pytest.mark.parametrize("make,layer_path", [(InplaceReluNet, "features.1"), (tiny_densenet, "features.norm5")])
def test_library_pairs_post_relu_activations_with_pre_relu_gradients_before_an_inplace_relu(tmp_path, make,
                                                                                            layer_path):
    torch.manual_seed(0)
    model = make().eval()
    bundle = tmp_path / "model.bundle"
    fusioncam.export_torch(model, layer_path, bundle, input_size=(64, 64))
    x, targets = images(2, 64, seed=5), [0, 4]
    methods = ("gradcam", "gradcam++")
    theirs = library_maps(model, model.get_submodule(layer_path), x, targets, methods)
    with fusioncam.Explainer(bundle, device="cpu", compat=PGC) as explainer:
        ours = explainer.explain(x, targets=targets, methods=methods).maps
    # fusioncam pairs a tensor with its own gradient: a ReLU module's in-place flag is switched off at export (the
    # pre-ReLU output and gradient), DenseNet's functional in-place ReLU cannot be (its output and gradient).
    # pytorch-grad-cam stores the output tensor, which the in-place ReLU then overwrites (post-ReLU), while its
    # gradient hook sees the pre-ReLU tensor (the gradient is 0 where the ReLU cut).
    graph = run_explain_graph(bundle, x, targets)
    acts, grads = graph["activations"], graph["gradients"]
    post_relu, pre_relu_grads = np.maximum(acts, 0), grads * (acts > 0)
    expected = {"gradcam": numpy_kernels.gradcam_weights(pre_relu_grads),
                "gradcam++": plus_plus_weights(post_relu, pre_relu_grads)}
    for method, weights in expected.items():
        paired = numpy_kernels.relu_upsample_normalize(numpy_kernels.weighted_channel_sum(post_relu, weights), (64, 64))
        assert max_diff(paired, theirs[method]) <= 1e-4, method
        assert max_diff(ours[method], theirs[method]) > 1e-3, method


# ---------------------------------------------------------------- the option's surfaces


@pytest.mark.parametrize("compat", ["pgc", "PyTorch-Grad-CAM", 1, True])
def test_invalid_compat_is_an_input_error_naming_the_choices(small_net, compat):
    _, bundle = small_net
    with pytest.raises(InputError, match="pytorch-grad-cam"):
        fusioncam.Explainer(bundle, device="cpu", compat=compat)
    with pytest.raises(InputError, match="pytorch-grad-cam"):
        FusionCAM(str(bundle), compat=compat)


def test_compat_on_a_segmentation_bundle_is_an_input_error(tmp_path):
    from tests.support.segmentation_models import QuadrantNet

    fusioncam.export_torch_segmentation(QuadrantNet().eval(), "target", tmp_path / "quadrant.fcam", input_size=(32, 32))
    with pytest.raises(InputError, match="segmentation bundle.*compat=None"):
        fusioncam.Explainer(tmp_path / "quadrant.fcam", device="cpu", compat=PGC)


def test_cli_compat_flag_writes_the_compatible_maps(small_net, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    _, bundle = small_net
    picture = tmp_path / "in" / "noise.png"
    picture.parent.mkdir()
    cv2.imwrite(str(picture), np.random.default_rng(7).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["explain", str(picture), "--model", str(bundle), "--out", str(out), "--device", "cpu",
                 "--methods", "scorecam,gradcam++", "--compat", PGC]) == 0
    with fusioncam.Explainer(bundle, device="cpu", compat=PGC) as explainer:
        want = explainer.explain_files([picture], methods=("scorecam", "gradcam++"))
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        default = explainer.explain_files([picture], methods=("scorecam", "gradcam++"))
    assert json.loads((out / "results.json").read_text())["compat"] == PGC
    for method, stem in (("scorecam", "scorecam"), ("gradcam++", "gradcampp")):
        written = np.load(out / f"noise_{stem}.npy")
        assert max_diff(written, want.maps[method][0]) <= 1e-6, method
        assert max_diff(written, default.maps[method][0]) > 1e-3, method
    with pytest.raises(SystemExit):
        main(["explain", str(picture), "--model", str(bundle), "--out", str(tmp_path / "o2"), "--compat", "pgc"])
    assert "pytorch-grad-cam" in capsys.readouterr().err


def test_adapter_builds_fusion_cam_on_the_compatible_score_cam(small_net):
    model, bundle = small_net
    x, targets = images(1, 32, seed=2), [4]
    with FusionCAM(str(bundle), device="cpu", compat=PGC) as cam:
        fused = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(4)])
        scorecam = cam.last_explanation.scorecam
    with fusioncam.Explainer(bundle, device="cpu", compat=PGC) as explainer:
        want = explainer.explain(x, targets=targets, methods=("fusion",))
    np.testing.assert_array_equal(fused, want.fusion)
    theirs = library_maps(model, model.features[2], x, targets, ("scorecam",))["scorecam"]
    assert max_diff(scorecam, theirs) <= 1e-4


# ---------------------------------------------------------------- CUDA: the same array code on CuPy


@pytest.mark.skipif(NO_GPU is not None, reason=f"no usable CUDA GPU: {NO_GPU}")
def test_cuda_compat_maps_equal_the_cpu_ones(small_net):
    import cupy as cp

    rng = np.random.default_rng(3)
    acts = rng.standard_normal((2, 5, 4, 4)).astype(np.float32)
    grads = (rng.standard_normal((2, 5, 4, 4)) * 1e-3).astype(np.float32)
    np.testing.assert_allclose(cp.asnumpy(plus_plus_weights(cp.asarray(acts), cp.asarray(grads))),
                               plus_plus_weights(acts, grads), rtol=1e-12)
    for got, want in zip(aligned_min_max(cp.asarray(acts), (32, 32)), aligned_min_max(acts, (32, 32))):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=1e-6)
    _, bundle = small_net
    x, methods = images(2, 32), ("gradcam++", "scorecam")
    maps = {}
    for device in ("cpu", "cuda"):
        with fusioncam.Explainer(bundle, device=device, compat=PGC) as explainer:
            maps[device] = explainer.explain(x, targets=[1, 3], methods=methods).maps
    for method in methods:
        assert max_diff(maps["cuda"][method], maps["cpu"][method]) <= 1e-4, method
