"""The explain graph against torch autograd: logits, activations and gradients for real architectures."""

from __future__ import annotations

import pytest

import fusioncam
from tests.support.autograd_reference import assert_parity, autograd_layer_gradients, non_inplace, run_explain_graph
from tests.support.torch_reference import module_by_path
from tests.support.parity import images_for, model_named

# (model, layer, input size): small inputs keep the CPU suite fast; EfficientNet-Lite0 runs at its own 224.
CASES = [
    ("resnet18", "layer4", 64),
    ("resnet18", "layer3", 64),
    ("resnet50", "layer4", 64),
    ("vgg16", "features.29", 64),
    ("mobilenet_v2", "features.18", 64),
    ("mobilenet_v3_small", "features.9", 96),
    ("densenet121", "features.denseblock3", 64),
    ("convnext_tiny", "features.7", 64),
    ("efficientnet_lite0", "_blocks.15", 224),
    ("efficientnet_lite0", "_conv_head", 224),
]
VGG_HEAD_WIDTH = 256


def model_for_parity(name: str):
    """The session's model; VGG16's classifier made 256 wide instead of 4096 (seeded; the same Linear, ReLU, Dropout
    layers): its two 4096-wide layers are 120 M of the model's 138 M weights, which the export writes and hashes,
    and the gradient at features.29 passes through the same ops either way."""
    model = model_named(name)
    if name == "vgg16" and model.classifier[0].out_features != VGG_HEAD_WIDTH:
        import torch

        torch.manual_seed(1)
        first = model.classifier[0]
        model.classifier[0] = torch.nn.Linear(first.in_features, VGG_HEAD_WIDTH)
        model.classifier[3] = torch.nn.Linear(VGG_HEAD_WIDTH, VGG_HEAD_WIDTH)
        model.classifier[6] = torch.nn.Linear(VGG_HEAD_WIDTH, model.classifier[6].out_features)
        model.eval()
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name,layer,size", CASES, ids=[f"{m}-{l}" for m, l, _ in CASES])
def test_export_torch_matches_autograd(tmp_path, name, layer, size):
    model = model_for_parity(name)
    result = fusioncam.export_torch(model, layer, tmp_path / "b.fcam", input_size=(size, size))
    reference_model = non_inplace(model)
    module = module_by_path(reference_model, layer)
    for images, targets in ((images_for(size, 1), [-1]), (images_for(size, 3), [5, -1, 17])):
        got = run_explain_graph(result.bundle.path, images, targets)
        want = autograd_layer_gradients(reference_model, module, images, targets)
        assert_parity(got, want)
    manifest = result.bundle.manifest
    assert manifest.channels == want["activations"].shape[1]
    assert tuple(manifest.feature_size) == want["activations"].shape[2:]
