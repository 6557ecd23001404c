"""Explainer (ONNX Runtime, CPU provider, NumPy kernels) against the independent eager PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fusioncam
from tests.support.parity import assert_matches_reference
from tests.support.sharp_resnet18 import LAYER, SIZE, sharp_resnet18, sharp_resnet18_bundle
from tests.support.torch_reference import module_by_path, reference_fusion_cam





@pytest.mark.slow
def test_efficientnet_lite0_sample_images_match_reference(sample_batch, efficientnet_explanation,
                                                         efficientnet_chelsea_reference):
    """chelsea's Fusion-CAM (maps, betas, class, probability) in the five-image default explanation against the eager
    reference (320 PyTorch forwards, shared with test_methods_parity's sweep test through the session fixture).
    A second photo's reference (coffee: another 320 forwards) would repeat the same comparison on the same model,
    layer and code path."""
    names, _ = sample_batch
    i = names.index("chelsea")
    assert_matches_reference(efficientnet_explanation, i, efficientnet_chelsea_reference["fusion_reference"])
    # The anchors' top-1 predictions of this model (shared/reference/anchors.md): chelsea is an Egyptian cat (285).
    assert int(efficientnet_explanation.classes[i]) == 285


@pytest.mark.slow
# VGG16 (a plain 512-channel conv stack) is checked against autograd in tests/export/test_export_parity.py; the
# runtime's arithmetic after the explain pass does not depend on the architecture, and its eager Fusion-CAM here
# took 40 s of the suite for what ResNet-18 and EfficientNet-Lite0 already cover.
def test_random_resnet18_matches_reference():
    """The seeded ResNet-18 with a sharpened head (tests/support/sharp_resnet18.py: well-conditioned betas), its
    `layer4` bundle shared with test_methods_parity and test_skip_constant."""
    model, bundle = sharp_resnet18(), sharp_resnet18_bundle()
    images = np.random.default_rng(3).standard_normal((2, 3, *SIZE)).astype(np.float32)
    targets = [None, 7]  # None: the image's top class (-1 would be the last class)
    explanation = fusioncam.Explainer(bundle, device="cpu", batch_size=100).explain(images, targets)
    module = module_by_path(model, LAYER)
    for i, target in enumerate(targets):
        reference = reference_fusion_cam(model, module, torch.from_numpy(images[i]), target)
        assert_matches_reference(explanation, i, reference)
