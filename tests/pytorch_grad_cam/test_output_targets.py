"""pytorch-grad-cam's targets that are not one logit, on fusioncam.pytorch_grad_cam: ClassifierOutputSoftmaxTarget,
BinaryClassifierOutputTarget and RawScoresOutputTarget give pytorch-grad-cam 1.5.7's maps (<= 1e-4) for the methods
whose maps come from the explain pass (the targets are the explain graph's backward seed: target_seed_graph.py);
RawScoresOutputTarget on a many-logit model, which pytorch-grad-cam cannot differentiate, against torch autograd of the
summed logits; clear errors where a target does not apply."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")

import fusioncam.pytorch_grad_cam as drop_in  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.pytorch_grad_cam.utils import model_targets as our_targets  # noqa: E402
from pytorch_grad_cam.utils import model_targets as their_targets  # noqa: E402
from tests.support.small_cnn import SmallNet, images, max_diff  # noqa: E402

GRADIENT_CLASSES = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "GradCAMElementWise", "LayerCAM",
                    "EigenGradCAM"]


class OneLogitNet(SmallNet):
    """SmallNet with a one-logit head (a binary classifier, as BinaryClassifierOutputTarget expects)."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(16, 1)


@pytest.fixture(scope="module")
def binary_model():
    torch.manual_seed(1)
    return OneLogitNet().eval()


def both(name, model, layers, x, targets_of, **call):
    """(pytorch-grad-cam's, fusioncam's) maps with the targets made from each library's model_targets."""
    with getattr(pytorch_grad_cam, name)(model=model, target_layers=layers) as cam:
        theirs = cam(input_tensor=torch.from_numpy(x), targets=targets_of(their_targets), **call)
    with getattr(drop_in, name)(model=model, target_layers=layers, device="cpu") as cam:
        ours = cam(input_tensor=torch.from_numpy(x), targets=targets_of(our_targets), **call)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape and theirs.max() > 0.99
    return theirs, ours


def gradcam_reference(model, layer, x, score) -> np.ndarray:
    """Grad-CAM by torch autograd of score(logits) [N] summed over images, scaled as pytorch-grad-cam scales it."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    kept = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: kept.update(a=out))
    try:
        logits = model(torch.from_numpy(x))
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(score(logits).sum(), kept["a"])
    weights = grads.mean(dim=(2, 3), keepdim=True)
    low = torch.relu((weights * kept["a"]).sum(dim=1)).detach().numpy()
    return scale_cam_image(scale_cam_image(low, (x.shape[3], x.shape[2])))


@pytest.mark.parametrize("name", ["GradCAM", pytest.param("LayerCAM", marks=pytest.mark.slow)])
def test_softmax_target_matches_the_library(model, name):
    x = images(2, 32, seed=11)
    softmax = lambda t: [t.ClassifierOutputSoftmaxTarget(1), t.ClassifierOutputSoftmaxTarget(4)]  # noqa: E731
    theirs, ours = both(name, model, [model.features[2]], x, softmax)
    logit, _ = both(name, model, [model.features[2]], x,
                    lambda t: [t.ClassifierOutputTarget(1), t.ClassifierOutputTarget(4)])
    assert max_diff(theirs, logit) > 1e-2  # the softmax's gradient is another map: the seed is what is tested
    assert max_diff(ours, theirs) <= 1e-4


@pytest.mark.parametrize("category", [0, 1])
def test_binary_target_matches_the_library(binary_model, category):
    x = images(2, 32, seed=12)
    theirs, ours = both("GradCAM", binary_model, [binary_model.features[2]], x,
                        lambda t: [t.BinaryClassifierOutputTarget(category)] * 2)
    assert max_diff(ours, theirs) <= 1e-4


def test_binary_targets_give_opposite_weights(binary_model):
    x = images(1, 32, seed=12)
    _, positive = both("HiResCAM", binary_model, [binary_model.features[2]], x,
                       lambda t: [t.BinaryClassifierOutputTarget(1)])
    _, negative = both("HiResCAM", binary_model, [binary_model.features[2]], x,
                       lambda t: [t.BinaryClassifierOutputTarget(0)])
    assert max_diff(positive, negative) > 0.1  # the sign flips which positions survive the ReLU


def test_raw_scores_on_one_logit_match_the_library_and_on_many_the_summed_logits(model, binary_model):
    x = images(2, 32, seed=13)
    theirs, ours = both("GradCAM", binary_model, [binary_model.features[2]], x,
                        lambda t: [t.RawScoresOutputTarget()] * 2)
    assert max_diff(ours, theirs) <= 1e-4
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.features[2]]) as cam:
        with pytest.raises(RuntimeError, match="scalar outputs"):  # the library cannot differentiate 5 raw scores
            cam(input_tensor=torch.from_numpy(x), targets=[their_targets.RawScoresOutputTarget()] * 2)
    with drop_in.GradCAM(model=model, target_layers=[model.features[2]], device="cpu") as cam:
        ours = cam(input_tensor=torch.from_numpy(x), targets=[their_targets.RawScoresOutputTarget()] * 2)
    reference = gradcam_reference(model, model.features[2], x, lambda logits: logits.sum(dim=1))
    one_class = gradcam_reference(model, model.features[2], x, lambda logits: logits[:, 0])
    assert max_diff(reference, one_class) > 1e-2
    assert max_diff(ours, reference) <= 1e-4


def test_mixed_targets_in_one_batch(model):
    """A logit target and a softmax target side by side: each image gets its own seed."""
    x = images(2, 32, seed=14)
    mixed = lambda t: [t.ClassifierOutputTarget(2), t.ClassifierOutputSoftmaxTarget(2)]  # noqa: E731
    theirs, ours = both("GradCAM", model, [model.features[2]], x, mixed)
    assert max_diff(ours, theirs) <= 1e-4


def test_eigencam_ignores_the_target_as_the_library_does(model):
    x = images(1, 32, seed=15)
    theirs, ours = both("EigenCAM", model, [model.features[2]], x, lambda t: [t.ClassifierOutputSoftmaxTarget(3)])
    assert max_diff(ours, theirs) <= 1e-4


def test_targets_that_do_not_apply_are_clear_errors(model):
    x = images(1, 32)
    with drop_in.ScoreCAM(model=model, target_layers=[model.features[2]], device="cpu") as cam:
        with pytest.raises(InputError, match=r"ScoreCAM scores the target class's logit.*ClassifierOutputTarget.*"
                                             r"GradCAM"):
            cam(input_tensor=x, targets=[their_targets.ClassifierOutputSoftmaxTarget(1)])
    with drop_in.GradCAM(model=model, target_layers=[model.features[2]], device="cpu") as cam:
        with pytest.raises(InputError, match="one output logit.*this model has 5 outputs"):
            cam(input_tensor=x, targets=[their_targets.BinaryClassifierOutputTarget(1)])
        with pytest.raises(InputError, match=r"targets\[0\] is function.*ClassifierOutputSoftmaxTarget\(category\)"
                                             r".*RawScoresOutputTarget\(\).*arbitrary callable"):
            cam(input_tensor=x, targets=[lambda output: output[0]])


@pytest.mark.slow
@pytest.mark.parametrize("name", GRADIENT_CLASSES)
def test_resnet18_softmax_target(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    theirs, ours = both(name, resnet, [resnet.layer4], x, lambda t: [t.ClassifierOutputSoftmaxTarget(3)] * 2)
    assert max_diff(ours, theirs) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["GradCAM", "LayerCAM"])
def test_resnet18_binary_and_raw_targets_on_both_layers(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=1).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    layers = [resnet.layer3, resnet.layer4]
    for targets in (lambda t: [t.BinaryClassifierOutputTarget(0)] * 2, lambda t: [t.RawScoresOutputTarget()] * 2):
        theirs, ours = both(name, resnet, layers, x, targets)
        assert max_diff(ours, theirs) <= 1e-4
