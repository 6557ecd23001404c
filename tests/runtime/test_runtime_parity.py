"""Explainer (ONNX Runtime, CPU provider, NumPy kernels) against the independent eager PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fusioncam
from tests.support.torch_reference import module_by_path, reference_fusion_cam, sample_model
from tests.support.parity import assert_matches_reference





@pytest.mark.slow
def test_efficientnet_lite0_sample_images_match_reference(efficientnet_model, sample_batch, efficientnet_explanation):
    names, images = sample_batch
    layer = module_by_path(efficientnet_model, "_blocks.15")
    for i, name in enumerate(names):
        if name not in ("chelsea", "coffee"):  # two of the five: each eager reference is 320 PyTorch forwards
            continue
        reference = reference_fusion_cam(efficientnet_model, layer, torch.from_numpy(images[i]))
        assert_matches_reference(efficientnet_explanation, i, reference)
    # The anchors' top-1 predictions of this model (shared/reference/anchors.md): chelsea is an Egyptian cat (285).
    assert int(efficientnet_explanation.classes[names.index("chelsea")]) == 285


@pytest.mark.slow
# VGG16 (a plain 512-channel conv stack) is checked against autograd in tests/export/test_export_parity.py; the
# runtime's arithmetic after the explain pass does not depend on the architecture, and its eager Fusion-CAM here
# took 40 s of the suite for what ResNet-18 and EfficientNet-Lite0 already cover.
@pytest.mark.parametrize("name,layer", [("resnet18", "layer4")])
def test_random_torchvision_models_match_reference(tmp_path, name, layer):
    model = sample_model(name, seed=0)
    # Seeded random heads give nearly flat logits: every probability sits near 1/1000, and the betas, ratios of
    # probability differences of ~1e-6, would amplify float32 rounding far beyond 1e-5. A sharper head (logits x20)
    # makes the betas well conditioned, as they are for trained models.
    head = model.fc
    with torch.no_grad():
        head.weight.mul_(20.0)
        head.bias.mul_(20.0)
    size = (64, 64)
    fusioncam.export_torch(model, layer, tmp_path / "b.fcam", input_size=size)
    images = np.random.default_rng(3).standard_normal((2, 3, *size)).astype(np.float32)
    targets = [None, 7]  # None: the image's top class (-1 would be the last class)
    explanation = fusioncam.Explainer(tmp_path / "b.fcam", device="cpu", batch_size=100).explain(images, targets)
    module = module_by_path(model, layer)
    for i, target in enumerate(targets):
        reference = reference_fusion_cam(model, module, torch.from_numpy(images[i]), target)
        assert_matches_reference(explanation, i, reference)
