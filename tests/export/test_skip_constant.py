"""Constant-channel skipping is exact: maps and betas with the skip on equal those with it off (1e-6)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import fusioncam
from tests.support.parity import model_named

KEYS = ("fusion", "gradcam", "denoised", "scorecam", "combined")


def assert_skip_is_exact(bundle, images: np.ndarray, batch_size: int = 64, on=None):
    """Explain with and without the skip; everything must agree and the counters must add up."""
    on = on if on is not None else fusioncam.Explainer(bundle, device="cpu", batch_size=batch_size).explain(images)
    off = fusioncam.Explainer(bundle, device="cpu", batch_size=batch_size, skip_constant_channels=False).explain(images)
    for key in KEYS:
        np.testing.assert_allclose(getattr(on, key), getattr(off, key), atol=1e-6, rtol=0, err_msg=key)
    for key in on.betas:
        np.testing.assert_allclose(on.betas[key], off.betas[key], atol=1e-6, rtol=0, err_msg=key)
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
    names, images = sample_batch
    two = [names.index("chelsea"), names.index("coffee")]  # two of the five: each is 1,280 forwards with and without
    on = assert_skip_is_exact(conv_head_bundle, images[two])
    # anchors.md: 19-59% of this layer's channels are constant (all zero) on these images.
    fractions = on.forwards_skipped / 1280
    assert (fractions > 0.1).all() and (fractions < 0.7).all()


@pytest.mark.slow
def test_blocks_15_sample_images(efficientnet_bundle, sample_batch, efficientnet_explanation):
    assert_skip_is_exact(efficientnet_bundle, sample_batch[1], on=efficientnet_explanation)


@pytest.mark.slow
def test_random_resnet18_layer4(tmp_path):
    fusioncam.export_torch(model_named("resnet18"), "layer4", tmp_path / "r.fcam", input_size=(64, 64))
    images = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    on = assert_skip_is_exact(tmp_path / "r.fcam", images, batch_size=50)
    assert on.forwards_skipped.sum() > 0  # a ReLU-ended layer at 2x2 has dead channels even with random weights


@pytest.mark.slow
def test_no_constant_channel_runs_every_forward(tmp_path):
    """A layer before any ReLU (a conv output) has no constant channel: nothing may be skipped."""
    fusioncam.export_torch(model_named("resnet18"), "layer4.1.conv2", tmp_path / "c.fcam", input_size=(64, 64))
    images = np.random.default_rng(4).standard_normal((1, 3, 64, 64)).astype(np.float32)
    on = assert_skip_is_exact(tmp_path / "c.fcam", images, batch_size=50)
    assert on.forwards_skipped.sum() == 0
