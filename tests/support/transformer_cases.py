"""Transformer, Swin, ShuffleNetV2, LeViT and Hugging Face test cases, and the reference tap that reshapes their target into an explicit [N,C,h,w] map."""

from __future__ import annotations

import copy
import torch
from tests.support.torch_reference import module_by_path


CLASSES = 10
ALL_METHODS = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")


class ThroughMap(torch.nn.Module):
    """`inner`, whose (first) output passes through an explicit [N,C,h,w] map with a tap, then back unchanged."""

    def __init__(self, inner: torch.nn.Module, kind: str, prefix: int = 0, grid: tuple[int, int] | None = None):
        super().__init__()
        self.inner, self.kind, self.prefix, self.grid = inner, kind, prefix, grid
        self.tap = torch.nn.Identity()

    def _through(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.kind == "nchw":
            return self.tap(tensor)
        if self.kind == "nhwc":
            return self.tap(tensor.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        head, patches = tensor[:, : self.prefix], tensor[:, self.prefix :]
        n, _t, c = patches.shape
        h, w = self.grid
        mapped = self.tap(patches.reshape(n, h, w, c).permute(0, 3, 1, 2))
        return torch.cat([head, mapped.permute(0, 2, 3, 1).reshape(n, h * w, c)], dim=1)

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):
            return (self._through(out[0]), *out[1:])
        return self._through(out)


class LogitsOnly(torch.nn.Module):
    """A Hugging Face classifier returning its `.logits` tensor (what the eager references call)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).logits


def tapped(model: torch.nn.Module, path: str, kind: str, prefix: int = 0, grid=None):
    """A copy of `model` with the module at `path` wrapped in ThroughMap; returns (copy, its tap)."""
    clone = copy.deepcopy(model).eval()
    parent_path, _, last = path.rpartition(".")
    parent = module_by_path(clone, parent_path) if parent_path else clone
    wrapper = ThroughMap(parent._modules[last], kind, prefix, grid)
    parent._modules[last] = wrapper
    return clone, wrapper.tap


def sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """Random-weight heads give nearly uniform probabilities, whose differences (the betas of Fusion-CAM and
    Union-CAM) are float noise; larger class-projection weights make them differ for real."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features == CLASSES:
                module.weight.mul_(50.0)
    return model.eval()


def _timm(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    import timm

    return sharpened(timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs))


def _torchvision_swin() -> torch.nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return sharpened(SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 2], num_heads=[1, 2],
                                     window_size=[4, 4], num_classes=CLASSES))


def _shufflenet() -> torch.nn.Module:
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(0)
    return sharpened(shufflenet_v2_x0_5(num_classes=CLASSES))


def _hf_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    import transformers

    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=CLASSES)
    return sharpened(transformers.ViTForImageClassification(config))


def _hf_swin() -> torch.nn.Module:
    torch.manual_seed(0)
    import transformers

    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 2], num_heads=[1, 2],
                                     window_size=4, num_labels=CLASSES)
    return sharpened(transformers.SwinForImageClassification(config))


VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


# name: (model factory, input size, target path (None: automatic), the path the automatic choice must give,
#        expected (kind, prefix tokens, grid), K)
CASES = {
    "vit_class_token": (lambda: _timm("vit_tiny_patch16_224", **VIT), 32, None, "blocks.1.norm1",
                        ("tokens", 1, (4, 4)), 32),
    "vit_registers": (lambda: _timm("vit_tiny_patch16_224", reg_tokens=4, **VIT), 32, None, "blocks.1.norm1",
                      ("tokens", 5, (4, 4)), 32),
    "deit_distilled": (lambda: _timm("deit_tiny_distilled_patch16_224", **VIT), 32, None, "blocks.1.norm1",
                       ("tokens", 2, (4, 4)), 32),
    "swin_torchvision": (_torchvision_swin, 32, "features", None, ("nhwc", 0, (4, 4)), 32),
    "levit": (lambda: _timm("levit_128s", img_size=128), 128, "stages.0", None, ("tokens", 0, (8, 8)), 128),
    "shufflenet_v2": (_shufflenet, 96, None, "conv5", ("nchw", 0, (3, 3)), 1024),
    "hf_vit": (_hf_vit, 32, None, "vit.layers.1.layernorm_before", ("tokens", 1, (4, 4)), 32),
    "hf_swin": (_hf_swin, 32, None, "swin.layernorm", ("tokens", 0, (4, 4)), 32),
}
