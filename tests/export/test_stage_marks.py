"""list_layers marks the last block of each stage: the containers of blocks (ResNet's layerN), not the small
containers inside a block (ResNet's `layerN.0.downsample`, Res2Net's per-scale convs)."""

from __future__ import annotations

import torch
import torchvision

from fusioncam.export import list_layers

STAGE_END = "last block of a stage"


def _stage_ends(model: torch.nn.Module, size: int) -> list[str]:
    return [layer.name for layer in list_layers(model.eval(), (size, size)) if STAGE_END in layer.role]


def test_resnet_stages_are_its_four_layers_not_the_downsample_inside_a_block():
    torch.manual_seed(0)
    assert _stage_ends(torchvision.models.resnet18(weights=None), 64) == ["layer1", "layer2", "layer3", "layer4"]


def test_a_container_inside_a_single_block_stage_is_not_a_stage():
    """EfficientNet-B0's features.1 holds one MBConv block whose inner Sequential was marked before."""
    torch.manual_seed(0)
    ends = _stage_ends(torchvision.models.efficientnet_b0(weights=None), 64)
    assert not any(".block" in name for name in ends), ends
    assert {"features.2", "features.6"} <= set(ends)
