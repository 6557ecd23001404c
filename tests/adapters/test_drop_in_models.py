"""fusioncam.pytorch_grad_cam against pytorch-grad-cam 1.5.7 on real architectures (slow): torchvision's ResNet-18
(seeded random weights) at layer3, layer4 and both, with aug_smooth and eigen_smooth; a timm ViT with pytorch-grad-cam's own
vit_reshape_transform; torchvision's LR-ASPP with SemanticSegmentationTarget; and pytorch-grad-cam's README usage
snippet run with only its imports changed."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")

import fusioncam.pytorch_grad_cam as drop_in  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget  # noqa: E402
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform  # noqa: E402
from tests.support.small_cnn import max_diff  # noqa: E402

pytestmark = pytest.mark.slow
README_SNIPPET = Path(__file__).parent / "data" / "pytorch_grad_cam_readme_usage.md"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))


def both(name, model, layers, x, targets, aug_smooth=False, eigen_smooth=False, **options):
    """(pytorch-grad-cam's maps, fusioncam's) for class `name` on the same model, layers, images and targets."""
    call = dict(input_tensor=torch.from_numpy(x), targets=targets, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    with getattr(pytorch_grad_cam, name)(model=model, target_layers=layers, **options) as cam:
        theirs = cam(**call)
    with getattr(drop_in, name)(model=model, target_layers=layers, device="cpu", **options) as cam:
        ours = cam(**call)
    assert theirs.max() > 0.9 and ours.shape == theirs.shape and ours.dtype == np.float32  # a real map on both sides
    return theirs, ours


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.mark.parametrize("name, layer", [(name, layer) for layer in ("layer3", "layer4") for name in (
    "GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenCAM")] + [("ScoreCAM", "layer3")])
def test_resnet18_one_layer(resnet18, name, layer):
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    theirs, ours = both(name, resnet18, [getattr(resnet18, layer)], x, [ClassifierOutputTarget(3)] * 2)
    assert max_diff(ours, theirs) <= 1e-4


def exported_bundles(tmp_path) -> list[str]:
    """The bundles the drop-in exported into the test's cache (the `cache` fixture's folder)."""
    return sorted(path.name for path in (tmp_path / "cache" / "bundles").iterdir() if path.is_dir())


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "LayerCAM"])
def test_resnet18_layer3_and_layer4(resnet18, name, tmp_path):
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    theirs, ours = both(name, resnet18, [resnet18.layer3, resnet18.layer4], x, None)
    assert max_diff(ours, theirs) <= 1e-4
    assert len(exported_bundles(tmp_path)) == 1 and "layer3_layer4" in exported_bundles(tmp_path)[0]  # one for both


def test_resnet18_eigen_smooth(resnet18, tmp_path):
    x = np.random.default_rng(6).standard_normal((2, 3, 64, 64)).astype(np.float32)
    theirs, ours = both("GradCAM", resnet18, [resnet18.layer3, resnet18.layer4], x, None, eigen_smooth=True)
    assert max_diff(ours, theirs) <= 1e-4
    assert len(exported_bundles(tmp_path)) == 1


def test_resnet18_aug_smooth(resnet18):
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    theirs, ours = both("GradCAM", resnet18, [resnet18.layer3], x, None, aug_smooth=True)
    assert max_diff(ours, theirs) <= 1e-4


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "LayerCAM"])
def test_timm_vit_with_the_library_reshape_transform(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=64).eval()
    with torch.no_grad():
        vit.head.weight.mul_(50.0)  # random heads give near-uniform scores; larger ones give distinct gradients
    x = np.random.default_rng(4).standard_normal((2, 3, 64, 64)).astype(np.float32)
    reshape = functools.partial(vit_reshape_transform, height=4, width=4)
    theirs, ours = both(name, vit, [vit.blocks[-1].norm1], x, [ClassifierOutputTarget(3)] * 2,
                        reshape_transform=reshape)
    assert max_diff(ours, theirs) <= 1e-4


def test_segmentation_target_on_lraspp():
    from tests.support.segmentation_models import lraspp, random_images

    network = lraspp()

    class ScoresOnly(torch.nn.Module):  # pytorch-grad-cam's documented wrapper for torchvision's dict output
        def __init__(self) -> None:
            super().__init__()
            self.model = network

        def forward(self, x):
            return self.model(x)["out"]

    model = ScoresOnly().eval()
    x = random_images(2, seed=7)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    targets = []
    for image in predicted:
        category = int(np.bincount(image.ravel()).argmax())
        targets.append(SemanticSegmentationTarget(category, (image == category).astype(np.float32)))
    for i in range(2):  # the library sums every target's score into one loss: one image per call
        theirs, ours = both("GradCAM", model, [network.backbone.get_submodule("12")], x[i:i + 1], targets[i:i + 1])
        assert max_diff(ours, theirs) <= 1e-4, f"image {i}"


def test_readme_usage_snippet_runs_with_only_the_import_changed(monkeypatch):
    text = README_SNIPPET.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("from pytorch_grad_cam", "from fusioncam.pytorch_grad_cam")
    code = code.replace("input_tensor = # Create an input tensor image for your model..\n", "")
    assert "pytorch_grad_cam import GradCAM" in code and "from pytorch_grad_cam" not in code

    build = torchvision.models.resnet50

    def resnet50(weights=None):  # no network here: the same architecture, seeded random weights, 1000 classes
        torch.manual_seed(0)
        return build(weights=None).eval()

    monkeypatch.setattr(torchvision.models, "resnet50", resnet50)
    rgb = np.random.default_rng(5).random((64, 64, 3)).astype(np.float32)
    input_tensor = torch.from_numpy(((rgb - 0.5) / 0.5).transpose(2, 0, 1)[None].copy())
    namespace = {"input_tensor": input_tensor, "rgb_img": rgb}
    exec(compile(code, str(README_SNIPPET), "exec"), namespace)

    model = namespace["model"]
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        want = cam(input_tensor=input_tensor, targets=[ClassifierOutputTarget(281)])[0]
    assert max_diff(namespace["grayscale_cam"], want) <= 1e-4
    assert namespace["visualization"].shape == (64, 64, 3) and namespace["visualization"].dtype == np.uint8
    assert namespace["model_outputs"].shape == (1, 1000)
    assert int(namespace["model_outputs"].argmax()) == int(model(input_tensor).argmax())
