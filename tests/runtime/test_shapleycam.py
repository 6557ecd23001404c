"""ShapleyCAM: the in-graph Hessian-vector product against torch autograd's double backward, and the maps against
pytorch-grad-cam 1.5.7's ShapleyCAM (the library itself; <= 1e-4) on a CNN whose layers after the target are smooth
(GELU, tanh, SiLU: H A is not 0 and changes the map), on a ReLU CNN (H A exactly 0: no second pass, the map is
Grad-CAM's, as the library's autograd gives) and on a seeded ResNet-18 (slow); an op of the gradient without a rule
is a clear error."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")

import fusioncam  # noqa: E402
from fusioncam import pytorch_grad_cam as drop_in  # noqa: E402
from fusioncam.errors import UnsupportedOpError  # noqa: E402
from fusioncam.export.hessian_vector import HESSIAN_VECTOR, build_hessian_vector  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from tests.support.small_cnn import SmallNet, images, max_diff  # noqa: E402


class SmoothNet(torch.nn.Module):
    """The target (features, a signed convolution output) is followed by tanh, a convolution, SiLU, average pooling
    and a linear head: the gradient depends on the activations through float values, so H A is not 0."""

    def __init__(self, pool: torch.nn.Module | None = None):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(),
                                            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1))
        self.tail = torch.nn.Sequential(torch.nn.Tanh(), pool or torch.nn.Identity(),
                                        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.SiLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 5))

    def forward(self, x):
        return self.tail(self.features(x))


def seeded(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.5)  # large enough weights that the curvature shows in the map
    return model.eval()


def library_map(cls, model, layer, x, targets) -> np.ndarray:
    with cls(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(int(t)) for t in targets])


@pytest.fixture(scope="module")
def smooth(tmp_path_factory):
    torch.manual_seed(0)
    model = seeded(SmoothNet())
    bundle = tmp_path_factory.mktemp("shapley") / "smooth.bundle"
    fusioncam.export_torch(model, "features", bundle, input_size=(16, 16))
    return model, bundle


def test_hessian_vector_product_matches_double_backward(smooth):
    model, bundle = smooth
    graph = build_hessian_vector(onnx.load(str(bundle / "explain.onnx")))
    assert graph is not None
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = images(2, 16, seed=1)
    got = session.run(["gradients", HESSIAN_VECTOR], {"input": x, "target": np.array([1, 3], np.int64)})

    captured = {}
    hook = model.features.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    logits = model(torch.from_numpy(x))
    hook.remove()
    a = captured["a"]
    grads = torch.autograd.grad(logits[0, 1] + logits[1, 3], a, create_graph=True)[0]
    product = torch.autograd.grad(grads, a, grad_outputs=a)[0]
    for ours, theirs in zip(got, (grads, product)):
        theirs = theirs.detach()
        scale = float(theirs.abs().max())
        assert scale > 0 and max_diff(ours, theirs.numpy()) <= 1e-5 * scale


def test_shapleycam_matches_the_library_where_the_hessian_matters(smooth):
    model, bundle = smooth
    x = images(3, 16, seed=2)
    targets = [1, 3, 0]
    theirs = library_map(pytorch_grad_cam.ShapleyCAM, model, model.features, x, targets)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(x, targets=targets, methods=("gradcam", "shapleycam"))
    ours = result.maps["shapleycam"]
    assert not result.facts["shapleycam"]["hessian_vector_zero"].any()
    assert theirs.max() > 0.99 and max_diff(ours, theirs) <= 1e-4
    assert max_diff(ours, result.maps["gradcam"]) > 1e-2  # H A changed the map: the test sees the second derivative


def test_piecewise_linear_layers_give_a_zero_product_and_grad_cam(tmp_path):
    torch.manual_seed(0)
    model = SmallNet().eval()
    bundle = tmp_path / "small.bundle"
    fusioncam.export_torch(model, "features.2", bundle, input_size=(32, 32))
    assert build_hessian_vector(onnx.load(str(bundle / "explain.onnx"), load_external_data=False)) is None
    x = images(2, 32, seed=3)
    theirs = library_map(pytorch_grad_cam.ShapleyCAM, model, model.features[2], x, [1, 4])
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(x, targets=[1, 4], methods=("gradcam", "shapleycam"))
    assert result.facts["shapleycam"]["hessian_vector_zero"].all()
    assert theirs.max() > 0.99 and max_diff(result.maps["shapleycam"], theirs) <= 1e-4
    assert max_diff(result.maps["shapleycam"], result.maps["gradcam"]) == 0.0


@pytest.mark.slow  # an export into the cache
def test_drop_in_shapleycam(smooth, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))
    model, _ = smooth
    x = images(2, 16, seed=4)
    with drop_in.ShapleyCAM(model=model, target_layers=[model.features], device="cpu") as cam:
        ours = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(2), ClassifierOutputTarget(0)])
    theirs = library_map(pytorch_grad_cam.ShapleyCAM, model, model.features, x, [2, 0])
    assert max_diff(ours, theirs) <= 1e-4


def test_an_op_of_the_gradient_without_a_rule_is_named(tmp_path):
    """A max-pool between smooth layers: its gradient is a ScatterElements of values that depend on A (through the
    SiLU after it), which has no gradient rule, so the second pass cannot be taken, and the error says which op."""
    model = seeded(SmoothNet(pool=torch.nn.MaxPool2d(2)))
    bundle = tmp_path / "pool.bundle"
    fusioncam.export_torch(model, "features", bundle, input_size=(16, 16))
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        with pytest.raises(UnsupportedOpError, match=r"shapleycam .*second time.*ScatterElements"):
            explainer.explain(images(1, 16), targets=[0], methods=("shapleycam",))


@pytest.mark.slow
def test_shapleycam_matches_the_library_on_resnet18(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    bundle = tmp_path / "r18.bundle"
    fusioncam.export_torch(model, "layer3", bundle, input_size=(64, 64))
    x = images(2, 64, seed=4)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(x, targets=[3, 7], methods=("shapleycam",))
    theirs = library_map(pytorch_grad_cam.ShapleyCAM, model, model.layer3, x, [3, 7])
    assert result.facts["shapleycam"]["hessian_vector_zero"].all()
    assert theirs.max() > 0.99 and max_diff(result.maps["shapleycam"], theirs) <= 1e-4


@pytest.mark.slow
def test_vit_tokens_against_an_eager_reference(tmp_path):
    """A timm ViT target (tokens [N, T, C], the class token dropped by the layout): LayerNorm, softmax attention and
    GELU all have second-order rules. pytorch-grad-cam 1.5.7's ShapleyCAM fails on this model (torch has no double
    backward for the fused attention, and with the attention unfused its reshape_transform is not applied to the
    activations it weights), so the reference is eager torch: the double backward over the raw tokens (class token
    included, as the library takes it), rearranged, and Grad-CAM's map of the weights mean(G - 0.5 H A)."""
    timm = pytest.importorskip("timm")
    from tests.support.eigen_reference import gradcam_map_from_low

    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2,
                                                              num_heads=2, num_classes=5).eval()
    bundle = tmp_path / "vit.bundle"
    fusioncam.export_torch(model, "blocks.1.norm1", bundle, input_size=(32, 32))
    x = images(2, 32, seed=6)
    with fusioncam.Explainer(bundle, device="cpu") as explainer:
        result = explainer.explain(x, targets=[1, 3], methods=("gradcam", "shapleycam"))

    for block in model.blocks:
        block.attn.fused_attn = False  # the same arithmetic, with a double backward
    captured = {}
    hook = model.blocks[1].norm1.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    logits = model(torch.from_numpy(x))
    hook.remove()
    tokens = captured["a"]
    grads = torch.autograd.grad(logits[0, 1] + logits[1, 3], tokens, create_graph=True)[0]
    product = torch.autograd.grad(grads, tokens, grad_outputs=tokens)[0]

    def grid(t):
        return t.detach()[:, 1:, :].reshape(2, 4, 4, 32).permute(0, 3, 1, 2).numpy()

    weights = (grid(grads) - 0.5 * grid(product)).mean(axis=(2, 3))
    expected = gradcam_map_from_low((weights[:, :, None, None] * grid(tokens)).sum(axis=1), (32, 32))
    assert not result.facts["shapleycam"]["hessian_vector_zero"].any()
    assert max_diff(result.maps["shapleycam"], expected) <= 1e-4
    assert max_diff(result.maps["shapleycam"], result.maps["gradcam"]) > 1e-3  # the product changed the map
