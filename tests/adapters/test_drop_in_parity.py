"""fusioncam.pytorch_grad_cam against pytorch-grad-cam 1.5.7 itself: the same class names, constructor and call on
the same seeded weights, layers, images and targets give the same maps (<= 1e-4): every class whose method is in
fusioncam's registry, one and several target layers, aug_smooth; its own and pytorch-grad-cam's target objects;
clear errors for targets no graph computes and classes whose method is not available."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (grad-cam) is in the test extra")

import fusioncam.pytorch_grad_cam as drop_in  # noqa: E402
from fusioncam.errors import InputError  # noqa: E402
from fusioncam.pytorch_grad_cam.utils import model_targets as our_targets  # noqa: E402
from fusioncam.runtime.methods.registry import REGISTRY  # noqa: E402
from pytorch_grad_cam.utils import model_targets as their_targets  # noqa: E402
from tests.support.small_cnn import SmallNet, images, max_diff  # noqa: E402

# The classes both libraries have, whose method fusioncam's registry holds now.
SHARED = [name for name, cls in drop_in.CLASS_METHODS.items()
          if hasattr(pytorch_grad_cam, name) and cls.method in REGISTRY]


def fast_first(names):
    """Parameters with GradCAM fast and the others marked slow (the fast subset stays near a minute in all)."""
    return [pytest.param(name, marks=() if name == "GradCAM" else pytest.mark.slow) for name in names]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONCAM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SmallNet().eval()


def both(name, model, layers, x, targets_of, **call):
    """(theirs, ours) maps of class `name` on the same model, layers, images and targets."""
    their_targets_list = None if targets_of is None else targets_of(their_targets)
    with getattr(pytorch_grad_cam, name)(model=model, target_layers=layers) as cam:
        theirs = cam(input_tensor=torch.from_numpy(x), targets=their_targets_list, **call)
    our_list = None if targets_of is None else targets_of(our_targets)
    with getattr(drop_in, name)(model=model, target_layers=layers, device="cpu") as cam:
        ours = cam(input_tensor=torch.from_numpy(x), targets=our_list, **call)
        assert torch.equal(cam.outputs, model(torch.from_numpy(x)).detach()) or \
            max_diff(cam.outputs, model(torch.from_numpy(x)).detach()) <= 1e-4
    return theirs, ours


def test_shared_classes_cover_the_registered_methods():
    assert {"GradCAM", "GradCAMPlusPlus", "XGradCAM", "ScoreCAM", "HiResCAM", "LayerCAM", "EigenCAM",
            "KPCA_CAM", "FinerCAM"} <= set(SHARED)


@pytest.mark.parametrize("name", fast_first(SHARED))
def test_each_class_matches_the_library_on_one_layer(name, model):
    x = images(2, 32, seed=3)
    targets = None if name == "FinerCAM" else (lambda t: [t.ClassifierOutputTarget(1), t.ClassifierOutputTarget(4)])
    theirs, ours = both(name, model, [model.features[2]], x, targets)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape == (2, 32, 32)
    assert theirs.max() > 0.99
    assert max_diff(ours, theirs) <= 1e-4, name


@pytest.mark.parametrize("name", fast_first(["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM"]))
def test_several_target_layers_match_the_library(name, model):
    x = images(2, 32, seed=4)
    layers = [model.features[0], model.features[2]]
    theirs, ours = both(name, model, layers, x, lambda t: [t.ClassifierOutputTarget(2)] * 2)
    single, _ = both(name, model, layers[1:], x, lambda t: [t.ClassifierOutputTarget(2)] * 2)
    assert max_diff(theirs, single) > 1e-2  # the first layer changes the map: the aggregation is tested
    assert max_diff(ours, theirs) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["EigenCAM", "ScoreCAM"])
def test_several_target_layers_of_engine_methods_match_the_library(name, model):
    """Methods whose maps come from the engine: each layer's map equals the library's single-layer map, and the
    layers are weighed as the library weighs them (scaled before upsampling: runtime/layer_aggregation.py), not
    as a plain mean of the final maps."""
    x = images(2, 32, seed=4)
    layers = [model.features[0], model.features[2]]
    one = [both(name, model, [layer], x, lambda t: [t.ClassifierOutputTarget(2)] * 2) for layer in layers]
    for theirs, ours in one:
        assert max_diff(ours, theirs) <= 1e-4
    mean = np.mean(np.stack([np.maximum(theirs, 0) for theirs, _ in one], axis=1), axis=1)
    mean = mean - mean.min(axis=(1, 2), keepdims=True)
    expected = mean / (1e-7 + mean.max(axis=(1, 2), keepdims=True))
    library_multi, ours = both(name, model, layers, x, lambda t: [t.ClassifierOutputTarget(2)] * 2)
    assert max_diff(expected, one[1][0]) > 1e-2  # the first layer changes the map: the aggregation is tested
    assert max_diff(library_multi, expected) > 1e-2  # the plain mean of the final maps is not the library's
    assert max_diff(ours, library_multi) <= 1e-4


@pytest.mark.parametrize("name", fast_first(["GradCAM", "ScoreCAM"]))
def test_aug_smooth_matches_the_library(name, model):
    x = images(2, 32, seed=5)
    theirs, ours = both(name, model, [model.features[2]], x, None, aug_smooth=True)
    plain, _ = both(name, model, [model.features[2]], x, None)
    assert max_diff(theirs, plain) > 1e-2  # the augmentations change the map
    assert max_diff(ours, theirs) <= 1e-4


def test_library_target_objects_and_ints_give_the_same_maps(model):
    x = torch.from_numpy(images(2, 32, seed=6))
    with drop_in.GradCAM(model=model, target_layers=["features.2"], device="cpu") as cam:
        by_theirs = cam(input_tensor=x, targets=[their_targets.ClassifierOutputTarget(3)] * 2)
        by_ours = cam(input_tensor=x, targets=[our_targets.ClassifierOutputTarget(3)])
        by_ints = cam(input_tensor=x.numpy(), targets=[3, 3])
        other = cam(input_tensor=x, targets=[0, 0])
    np.testing.assert_array_equal(by_theirs, by_ours)
    np.testing.assert_array_equal(by_theirs, by_ints)
    assert max_diff(other, by_ints) > 1e-2


def test_targets_no_graph_computes_are_clear_errors(model):
    """Softmax, binary and raw-score targets: tests/pytorch_grad_cam/test_output_targets.py."""
    with drop_in.GradCAM(model=model, target_layers=[model.features[2]], device="cpu") as cam:
        with pytest.raises(InputError, match=r"ClassifierOutputSoftmaxTarget.*SemanticSegmentationTarget"):
            cam(input_tensor=images(1, 32), targets=[lambda output: output[0]])


def test_constructor_and_call_errors(model):
    with pytest.raises(InputError, match="non-empty list"):
        drop_in.GradCAM(model=model, target_layers=model.features[2])
    with pytest.raises(Exception, match="ModuleList|not a submodule"):
        drop_in.GradCAM(model=model, target_layers=[torch.nn.ReLU()])
    with drop_in.GradCAM(model=model, target_layers=[model.features[2]], device="cpu") as cam:
        with pytest.raises(InputError, match="3 given for 2 images"):
            cam(input_tensor=images(2, 32), targets=[1, 2, 3])


def test_classes_without_a_registered_method_say_so(model):
    missing = [cls for cls in drop_in.CLASS_METHODS.values() if cls.method not in REGISTRY]
    for cls in missing:
        with pytest.raises(drop_in.MethodNotAvailable, match=f"{cls.__name__} .*not available.*GradCAM"):
            cls(model=model, target_layers=[model.features[2]])


EIGEN_SMOOTHED = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM", "GradCAMElementWise", "LayerCAM", "EigenCAM"]


@pytest.mark.parametrize("name", fast_first(EIGEN_SMOOTHED))
def test_eigen_smooth_matches_the_library(name, model):
    x = images(2, 32, seed=7)
    targets = lambda t: [t.ClassifierOutputTarget(1), t.ClassifierOutputTarget(3)]  # noqa: E731
    theirs, ours = both(name, model, [model.features[2]], x, targets, eigen_smooth=True)
    assert theirs.max() > 0.99 and max_diff(ours, theirs) <= 1e-4, name
    if name != "EigenCAM":  # the library ignores eigen_smooth for Eigen-CAM (a projection already)
        plain, _ = both(name, model, [model.features[2]], x, targets)
        assert max_diff(plain, theirs) > 1e-2  # the projection changes the map: it is what is compared


@pytest.mark.slow
def test_eigen_smooth_on_two_layers_with_aug_smooth_matches_the_library(model):
    """With eigen_smooth each layer's map is scaled as the library scales it, so two layers agree exactly too."""
    x = images(2, 32, seed=8)
    layers = [model.features[0], model.features[2]]
    theirs, ours = both("GradCAM", model, layers, x, None, eigen_smooth=True)
    assert max_diff(ours, theirs) <= 1e-4
    theirs, ours = both("LayerCAM", model, layers, x, None, eigen_smooth=True, aug_smooth=True)
    assert max_diff(ours, theirs) <= 1e-4


def test_eigen_smooth_of_a_sweep_method_is_a_clear_error(model):
    with drop_in.ScoreCAM(model=model, target_layers=[model.features[2]], device="cpu") as cam:
        with pytest.raises(InputError, match=r"eigen_smooth=True is not available for ScoreCAM.*gradcam"):
            cam(input_tensor=images(1, 32), eigen_smooth=True)


def test_batch_size_attribute_reaches_the_explainer_and_keeps_the_map(model):
    x = images(1, 32, seed=9)
    with drop_in.ScoreCAM(model=model, target_layers=[model.features[2]], device="cpu") as cam:
        default = cam(input_tensor=x, targets=[1])
        cam.batch_size = 3
        small = cam(input_tensor=x, targets=[1])
        assert [e.batch_size for e in cam._explainers.values()] == [16, 3]
        cam.batch_size = 0
        with pytest.raises(InputError, match="batch_size"):
            cam(input_tensor=x, targets=[1])
    assert max_diff(default, small) <= 1e-6


def test_reshape_transforms_are_told_apart_in_the_cache_key():
    import functools

    from fusioncam.bundle_cache import callable_fingerprint
    from fusioncam.pytorch_grad_cam.utils.reshape_transforms import swinT_reshape_transform, vit_reshape_transform

    def grid(size):
        return lambda tensor: vit_reshape_transform(tensor, size, size)

    prints = {callable_fingerprint(f) for f in (
        vit_reshape_transform, swinT_reshape_transform, functools.partial(vit_reshape_transform, height=4, width=4),
        functools.partial(vit_reshape_transform, height=7, width=7), grid(4), grid(7))}
    assert len(prints) == 6
    assert callable_fingerprint(functools.partial(vit_reshape_transform, height=4, width=4)) == \
        callable_fingerprint(functools.partial(vit_reshape_transform, height=4, width=4))
