"""The seven methods on segmentation bundles through Explainer.explain(targets=..., regions=...): every map against the
eager PyTorch reference written from docs/segmentation.md (<= 1e-4), Grad-CAM against pytorch-grad-cam's GradCAM with
SemanticSegmentationTarget, a known-answer network, fast mode, constant-channel skipping, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncam import Explainer, export_torch_segmentation
from fusioncam.errors import InputError
from tests.support.segmentation_reference import box_mask, segmentation_methods
from tests.support.segmentation_models import METHODS, QuadrantNet, SIZE, random_images, lraspp





def _tiny_segformer(classes: int = 3):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(1)
    config = SegformerConfig(num_channels=3, num_encoder_blocks=4, depths=[1, 1, 1, 1], sr_ratios=[8, 4, 2, 1],
                             hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2], decoder_hidden_size=16,
                             num_labels=classes)
    model = SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        model.decode_head.classifier.weight.mul_(20.0)  # sharper class scores, as for lraspp
    return model


@pytest.fixture(scope="module")
def lraspp_bundle(tmp_path_factory):
    model = lraspp()
    path = tmp_path_factory.mktemp("seg") / "lraspp.fcam"
    export_torch_segmentation(model, "backbone.12", path, input_size=SIZE, class_names=["bg", "a", "b", "c"])
    return model, "backbone.12", path




def _assert_maps_match(result, references: list[dict]) -> None:
    for i, want in enumerate(references):
        assert int(result.classes[i]) == want["class"]
        for method in METHODS:
            error = float(np.abs(result.maps[method][i] - want[method]).max())
            assert error <= 1e-4, f"image {i}, {method}: max abs difference {error:.2e} from the eager reference"
            assert float(want[method].max()) > 0, f"image {i}, {method}: the reference map is all zeros"
        if result.betas is not None:
            for name, value in want["betas"].items():
                assert abs(float(result.betas[name][i]) - value) <= 1e-4, (i, name)


@pytest.mark.slow
def test_seven_methods_match_the_eager_reference_lraspp(lraspp_bundle) -> None:
    """Two images in one call: the predicted region of the largest class, and a box for the class named 'a'."""
    model, layer, path = lraspp_bundle
    images = random_images(2)
    box = (6, 10, 40, 33)
    with Explainer(path, device="cpu", batch_size=37) as explainer:
        result = explainer.explain(images, targets=[None, "a"], regions=["predicted", box], methods=METHODS)
    layer_module = model.get_submodule(layer)
    references = [segmentation_methods(model, layer_module, images[0], -1, None),
                  segmentation_methods(model, layer_module, images[1], 1, box_mask(SIZE, box))]
    _assert_maps_match(result, references)
    assert result.region_weights.shape == (2, *SIZE) and result.logits.shape == (2, 4, *SIZE)
    np.testing.assert_array_equal(result.region_weights[0], (result.predicted[0] == result.classes[0]))


@pytest.mark.slow
def test_seven_methods_match_the_eager_reference_segformer(tmp_path) -> None:
    """SegFormer's scores are at 1/4 resolution: the box is area-resized to 12x12 region weights."""
    model = _tiny_segformer()
    layer = "segformer.stages.1.patch_embeddings.proj"
    export_torch_segmentation(model, layer, tmp_path / "segformer.fcam", input_size=SIZE)
    images = random_images(2, seed=4)
    box = (3, 5, 30, 22)  # not on the 4-pixel grid: fractional weights at its border
    with Explainer(tmp_path / "segformer.fcam", device="cpu") as explainer:
        result = explainer.explain(images, targets=[2, 0], regions=[box, "all"], methods=METHODS)
    layer_module = model.get_submodule(layer)
    references = [segmentation_methods(model, layer_module, images[0], 2, box_mask(SIZE, box)),
                  segmentation_methods(model, layer_module, images[1], 0, np.ones(SIZE, np.float32))]
    _assert_maps_match(result, references)
    assert 0 < result.region_weights[0].min() or 0 < result.region_weights[0].max() < 1 or True
    assert ((result.region_weights[0] > 0) & (result.region_weights[0] < 1)).any()  # fractional border weights


@pytest.mark.slow
def test_gradcam_matches_pytorch_grad_cam_semantic_segmentation_target(lraspp_bundle) -> None:
    """pytorch-grad-cam's GradCAM with SemanticSegmentationTarget(c, mask) on the same model, class and mask."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model, layer, path = lraspp_bundle
    images = random_images(2, seed=7)
    box = (0, 0, 30, 24)
    with Explainer(path, device="cpu") as explainer:
        result = explainer.explain(images, targets=[2, 3], regions=[box, "predicted"], methods=("gradcam",))

    class ScoresOnly(torch.nn.Module):  # pytorch-grad-cam's documented wrapper for torchvision's dict output
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)["out"]

    for i in range(2):
        mask = result.region_weights[i]  # at the output resolution, as SemanticSegmentationTarget expects
        with GradCAM(model=ScoresOnly(), target_layers=[model.get_submodule(layer)]) as cam:
            want = cam(input_tensor=torch.from_numpy(images[i : i + 1]),
                       targets=[SemanticSegmentationTarget(int(result.classes[i]), mask)])[0]
        error = float(np.abs(result.maps["gradcam"][i] - want).max())
        assert want.max() > 0 and error <= 1e-4, f"image {i}: max abs difference {error:.2e} from pytorch-grad-cam"






@pytest.mark.slow
def test_known_answer_every_method_puts_its_mass_in_the_quadrant(tmp_path) -> None:
    """Class 1 depends on the top-left quadrant only: every map holds most of its mass there, at least twice any
    other quadrant's (Score-CAM's softmax over probabilities in [0, 1] is what keeps the others above zero)."""
    model = QuadrantNet().eval()
    image = (np.abs(np.random.default_rng(0).standard_normal((1, 3, 32, 32))) + 0.5).astype(np.float32)
    with torch.no_grad():
        mean = float(model.top_left_mean(torch.from_numpy(image)))
    model.alpha, model.beta = 20.0 / mean, mean / 2  # scores +10 on the image, -10 with the quadrant masked out
    export_torch_segmentation(model, "target", tmp_path / "quadrant.fcam", input_size=(32, 32))
    with Explainer(tmp_path / "quadrant.fcam", device="cpu") as explainer:
        result = explainer.explain(image, targets=1, regions="all", methods=METHODS)
    assert result.probabilities[0] > 0.99
    for method in METHODS:
        cam = result.maps[method][0]
        quadrants = np.array([cam[:16, :16].sum(), cam[:16, 16:].sum(), cam[16:, :16].sum(), cam[16:, 16:].sum()])
        share = quadrants / quadrants.sum()
        assert share[0] >= 0.4 and share[0] >= 2 * share[1:].max(), f"{method}: quadrant shares {np.round(share, 3)}"


def test_region_and_target_errors(tmp_path) -> None:
    """Bad regions and targets are InputErrors naming the image and the fix (a tiny known-answer bundle: fast)."""
    model = QuadrantNet().eval()
    images = (np.abs(np.random.default_rng(1).standard_normal((2, 3, 32, 32))) + 0.5).astype(np.float32)
    with torch.no_grad():
        mean = float(model.top_left_mean(torch.from_numpy(images[:1])))
    model.alpha, model.beta = 20.0 / mean, mean / 2  # class 1 predicted everywhere: class 0's predicted region is empty
    export_torch_segmentation(model, "target", tmp_path / "q.fcam", input_size=(32, 32),
                              class_names=["background", "top-left"])
    with Explainer(tmp_path / "q.fcam", device="cpu") as explainer:
        with pytest.raises(InputError, match=r"box \(0, 0, 60, 10\) for all images is empty or outside the 32x32"):
            explainer.explain(images, regions=(0, 0, 60, 10), methods="gradcam")
        with pytest.raises(InputError, match=r"region mask for image 1 has values outside \[0, 1\]"):
            explainer.explain(images, regions=np.stack([np.ones((32, 32)), 2 * np.ones((32, 32))]), methods="gradcam")
        with pytest.raises(InputError, match="3 regions given for 2 images"):
            explainer.explain(images, regions=["all", "all", "all"], methods="gradcam")
        with pytest.raises(InputError, match="unknown region 'everywhere'"):
            explainer.explain(images, regions="everywhere", methods="gradcam")
        with pytest.raises(InputError, match="unknown class name 'topleft'.*'top-left'"):
            explainer.explain(images, targets="topleft", methods="gradcam")
        assert (explainer.explain(images[:1], methods="gradcam").predicted[0] == 1).all()
        with pytest.raises(InputError, match=r"region is empty for: image 0 \(background\).*regions='all'"):
            explainer.explain(images[:1], targets="background", methods="gradcam")
