"""Vision transformers, Swin, ShuffleNetV2, LeViT and Hugging Face classifiers: explain graph and seven methods.

The reference never uses fusioncam's layout code: the target module is wrapped (in a copy of the model) so that its
tensor goes through an explicit [N,C,h,w] map, written here in torch (prefix tokens split off, the grid reshaped and
permuted, then put back), with an `nn.Identity` tap on the map. Hooks and autograd on that tap give the map and its
gradient exactly as pytorch-grad-cam users get them with a reshape_transform; the model's outputs are unchanged.
Models have random weights and tiny configs (no downloads)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import fusioncam
from autograd_reference import assert_parity, autograd_layer_gradients, run_explain_graph
from test_methods_parity import MAP_TOLERANCE, assert_methods_match, max_diff
from test_runtime_parity import assert_matches_reference
from torch_reference import module_by_path, reference_fusion_cam
from torch_reference_methods import reference_methods

timm = pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")

ALL_METHODS = ("gradcam", "gradcam++", "xgradcam", "scorecam", "groupcam", "unioncam", "fusion")
SWEEP_REFERENCE = ("gradcam++", "xgradcam", "groupcam", "unioncam")  # unioncam brings the Fusion-CAM reference
# Union-CAM divides each channel's map by the sum of its positive kept gradients; at this random LeViT's first stage
# some sums are near 0, so float32 noise in G moves its map by ~0.05 (even fed the explain graph's own A and G):
# the other six methods are compared there.
UNION_NOT_COMPARED = {"levit"}


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


CLASSES = 10


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
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=CLASSES)
    return sharpened(transformers.ViTForImageClassification(config))


def _hf_swin() -> torch.nn.Module:
    torch.manual_seed(0)
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


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    """(case name, model, bundle result, tapped reference model, its tap, images) for one case."""
    name = request.param
    factory, size, path, auto_path, (kind, prefix, grid), channels = CASES[name]
    model = factory()
    result = fusioncam.export_torch(model, path, tmp_path_factory.mktemp(name) / "bundle", input_size=(size, size))
    used = result.bundle.manifest.target_layer
    if path is None:
        assert used == auto_path and result.picked_automatically
    layout = result.layer.layout
    assert (layout.kind, layout.prefix_tokens, layout.grid if kind == "tokens" else result.layer.spatial) == \
        (kind, prefix, grid), result.describe()
    assert result.layer.shape[1:] == (channels, *grid)

    def reference():
        """A fresh tapped copy per test (LeViT caches autograd tensors that a later deep copy refuses)."""
        reference_model, tap = tapped(model, used, kind, prefix, grid)
        if isinstance(model, transformers.PreTrainedModel):
            reference_model = LogitsOnly(reference_model)
        return reference_model, tap

    images = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    return name, result, reference, images


@pytest.mark.slow
def test_explain_graph_matches_autograd_on_the_map(exported):
    _name, result, reference, images = exported
    reference_model, tap = reference()
    targets = [-1, 3]
    got = run_explain_graph(result.bundle.path, images, targets)
    with torch.enable_grad():
        want = autograd_layer_gradients(reference_model, tap, images, targets)
    assert float(np.abs(want["gradients"]).max()) > 0  # the map's positions reach the logits
    assert_parity(got, want, tolerance=1e-4)


@pytest.mark.slow
def test_seven_methods_match_the_eager_reference_on_the_map(exported):
    name, result, reference, images = exported
    reference_model, tap = reference()
    explainer = fusioncam.Explainer(result.bundle.path, device="cpu", batch_size=64)
    explanation = explainer.explain(images[:1], methods=ALL_METHODS)
    image = torch.from_numpy(images[0])
    if name in UNION_NOT_COMPARED:
        expected = reference_methods(reference_model, tap, image, methods=("gradcam++", "xgradcam", "groupcam"))
        assert_methods_match(explanation, 0, expected)
        fusion = reference_fusion_cam(reference_model, tap, image)
        assert_matches_reference(explanation, 0, fusion)
        assert max_diff(explanation.maps["scorecam"][0], fusion["scorecam"]) <= MAP_TOLERANCE
    else:
        assert_methods_match(explanation, 0, reference_methods(reference_model, tap, image, methods=SWEEP_REFERENCE))
    for method in ALL_METHODS:
        assert np.isfinite(explanation.maps[method]).all()
