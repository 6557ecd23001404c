"""Constant-channel skipping is exact: maps and betas with the skip on equal those with it off (1e-6)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import fusioncam
from tests.support.parity import model_named
from tests.support.sharp_resnet18 import SIZE as SHARP_SIZE, sharp_resnet18_bundle
from tests.support.small_cnn import SmallNet

KEYS = ("fusion", "gradcam", "denoised", "scorecam", "combined")


def assert_skip_is_exact(bundle, images: np.ndarray, batch_size: int = 64, on=None, rows=None):
    """Explain with and without the skip; everything must agree and the counters must add up. `on` (optional) is
    an explanation with the skip already made of a batch whose images `rows` are `images` (default: all of them)."""
    on = on if on is not None else fusioncam.Explainer(bundle, device="cpu", batch_size=batch_size).explain(images)
    rows = np.arange(len(images)) if rows is None else np.asarray(rows)
    off = fusioncam.Explainer(bundle, device="cpu", batch_size=batch_size, skip_constant_channels=False).explain(images)
    for key in KEYS:
        np.testing.assert_allclose(getattr(on, key)[rows], getattr(off, key), atol=1e-6, rtol=0, err_msg=key)
    for key in on.betas:
        np.testing.assert_allclose(on.betas[key][rows], off.betas[key], atol=1e-6, rtol=0, err_msg=key)
    channels = fusioncam.Explainer(bundle, device="cpu").bundle.manifest.channels
    assert (off.forwards_skipped == 0).all() and (off.forwards_run == channels).all()
    assert (on.forwards_run + on.forwards_skipped == channels).all()
    return on


@pytest.fixture(scope="module")
def conv_head_bundle(tmp_path_factory):
    """EfficientNet-Lite0 exported to plain ONNX; the automatic target is the conv head's ReLU6 output (K=1280)."""
    folder = tmp_path_factory.mktemp("head")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model_named("efficientnet_lite0"), (torch.zeros(1, 3, 224, 224),), str(folder / "m.onnx"),
                          dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    result = fusioncam.export_onnx(folder / "m.onnx", folder / "head.fcam")
    assert result.layer.op_type == "Clip" and result.layer.shape[1:] == (1280, 7, 7)
    return result.bundle.path


@pytest.mark.slow
def test_conv_head_relu6_sample_images(conv_head_bundle, sample_batch):
    """chelsea alone (1,280 forwards without the skip): exactness with and without skipping is checked per image; a
    batch whose images skip different channels (17 and 20 of 512) is checked on ResNet-18 by
    test_random_resnet18_layer4."""
    names, images = sample_batch
    one = [names.index("chelsea")]
    on = assert_skip_is_exact(conv_head_bundle, images[one])
    # anchors.md: 19-59% of this layer's channels are constant (all zero) on these images.
    fractions = on.forwards_skipped / 1280
    assert (fractions > 0.1).all() and (fractions < 0.7).all()


@pytest.mark.slow
def test_blocks_15_sample_images(efficientnet_bundle, sample_batch, efficientnet_explanation):
    """The session's five-image explanation with the skip against chelsea and coffee explained without it (320
    forwards each; the other three images would repeat the same per-image comparison)."""
    names, images = sample_batch
    rows = [names.index("chelsea"), names.index("coffee")]
    assert_skip_is_exact(efficientnet_bundle, images[rows], on=efficientnet_explanation, rows=rows)


@pytest.mark.slow
def test_random_resnet18_layer4():
    """The seeded ResNet-18's `layer4` bundle shared with the runtime and methods parity tests (its head sharpened,
    which changes nothing at layer4: tests/support/sharp_resnet18.py)."""
    images = np.random.default_rng(2).standard_normal((2, 3, *SHARP_SIZE)).astype(np.float32)
    on = assert_skip_is_exact(sharp_resnet18_bundle(), images, batch_size=50)
    assert on.forwards_skipped.sum() > 0  # a ReLU-ended layer at 2x2 has dead channels even with random weights
    assert on.forwards_skipped[0] != on.forwards_skipped[1]  # one batch, different channels skipped per image


@pytest.mark.slow
def test_no_constant_channel_runs_every_forward(tmp_path):
    """A layer before any ReLU (a conv output) has no constant channel: nothing may be skipped. The small CNN's
    second convolution (16 signed channels, 8x8) is such a layer, as ResNet-18's layer4.1.conv2 is, at a fraction of
    its export and 512 forwards."""
    torch.manual_seed(0)
    fusioncam.export_torch(SmallNet().eval(), "features.2", tmp_path / "c.fcam", input_size=(32, 32))
    images = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    on = assert_skip_is_exact(tmp_path / "c.fcam", images, batch_size=50)
    assert on.forwards_skipped.sum() == 0
