"""The drop-in's CAM classes with FasterRCNNBoxScoreTarget on a seeded torchvision Faster R-CNN (MobileNetV3-Large FPN,
random weights, 128x128) against pytorch-grad-cam 1.5.7's own classes and target on the same model: maps within 1e-4,
the target's value, and the detections (`outputs`) torchvision reports; with the model's transform resizing the
images and two target layers; aug_smooth; the methods and inputs refused with this target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fusioncam.pytorch_grad_cam as ours
from fusioncam.errors import InputError
from fusioncam.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FasterRCNNBoxScoreTarget
from tests.support.faster_rcnn_models import SIZE, faster_rcnn
from tests.support.module_cache import cache  # noqa: F401 (autouse: the graphs are exported once per layer and size)

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget as Theirs  # noqa: E402

LAYER = "backbone.fpn.layer_blocks.0"
SECOND_LAYER = "backbone.body.16"


@pytest.fixture(scope="module")
def case():
    """(model, two images [2, 3, H, W] in [0, 1], their references (labels, boxes) per image, torchvision's
    detections). Image 0: a detection's own box (IoU 1: the tie of IoU's max and min), a detection's box shifted by
    2.5 pixels, a third detection, a box far from all (no match) and a detection's box with another label (no match);
    image 1: two detections' boxes rounded to integers, as pytorch-grad-cam's tutorial makes them (fewer matches
    than image 0: padded rows in the graph)."""
    model = faster_rcnn()
    images = torch.from_numpy(np.random.default_rng(1).random((2, 3, *SIZE)).astype(np.float32))
    with torch.no_grad():
        found = model(list(images))
    boxes, labels = found[0]["boxes"].numpy(), found[0]["labels"].tolist()
    first = ([labels[0], labels[1], labels[5], 2, labels[3] % 4 + 1],
             np.stack([boxes[0], boxes[1] + 2.5, boxes[5], np.float32([0, 0, 3, 3]), boxes[3]]))
    second = (found[1]["labels"][[0, 2]].tolist(), np.round(found[1]["boxes"][[0, 2]].numpy()))
    return model, images, [first, second], found


@pytest.fixture(scope="module")
def cams():
    """fusioncam's CAM objects on the module's detector by (class, target layers), closed at the end: each opens its
    two ONNX Runtime sessions once and is called by every test of that class, as a user calls one object again."""
    opened: dict[tuple, object] = {}
    yield opened
    for cam in opened.values():
        cam.__exit__(None, None, None)


def _ours(cams: dict | None, name: str, model, layers: tuple[str, ...]):
    """fusioncam's CAM object of class `name`: the module's shared one where `cams` is given, else a new one."""
    modules = [model.get_submodule(layer) for layer in layers]
    if cams is None:
        return getattr(ours, name)(model, target_layers=modules)
    if (name, layers) not in cams:
        cams[(name, layers)] = getattr(ours, name)(model, target_layers=modules).__enter__()
    return cams[(name, layers)]


def _both(name: str, model, images, references, layers=(LAYER,), cams: dict | None = None, **options):
    """(pytorch-grad-cam's maps and target values, fusioncam's maps and CAM object) for class `name`; fusioncam's
    object is the module's shared one (`cams`, on the module's detector) or a new one, closed after the call."""
    modules = [model.get_submodule(layer) for layer in layers]
    with getattr(pgc, name)(model, target_layers=modules) as cam:
        theirs = cam(images, targets=[Theirs(*r) for r in references], **options)
        values = [float(Theirs(*r)(output).detach()) for r, output in zip(references, cam.outputs)]
    targets = [FasterRCNNBoxScoreTarget(*r) for r in references]
    if cams is not None:
        cam = _ours(cams, name, model, tuple(layers))
        return theirs, values, cam(images, targets=targets, **options), cam
    with _ours(None, name, model, tuple(layers)) as cam:
        mine = cam(images, targets=targets, **options)
    return theirs, values, mine, cam


@pytest.mark.slow  # exports the detector's graph (about 20 s on 2 cores)
def test_gradcam_map_value_and_detections_equal_pytorch_grad_cams(case, cams) -> None:
    model, images, references, found = case
    theirs, values, mine, cam = _both("GradCAM", model, images, references, cams=cams)
    assert mine.dtype == np.float32 and mine.shape == (2, *SIZE)
    np.testing.assert_allclose(mine, theirs, atol=1e-4)
    assert values[0] > 3.0 and values[1] > 2.0  # three and two matches (IoU > 0.5 plus a score each)
    np.testing.assert_allclose(cam.box_scores, values, rtol=1e-4)
    for got, want in zip(cam.outputs, found):  # torchvision's detections, from the graph and the host's NMS
        assert got["labels"].tolist() == want["labels"].tolist()
        np.testing.assert_allclose(got["scores"].numpy(), want["scores"].numpy(), atol=1e-5)
        np.testing.assert_allclose(got["boxes"].numpy(), want["boxes"].numpy(), atol=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [("GradCAM", {"eigen_smooth": True}), ("HiResCAM", {}),
                                           ("GradCAMPlusPlus", {}), ("EigenCAM", {})])
def test_other_gradient_methods_equal_pytorch_grad_cams(case, cams, name, options) -> None:
    """Maps formed from the activations and the one gradient (LayerCAM, GradCAMElementWise and EigenGradCAM take the
    same path, explain_pass_maps.layer_map, and matched within 1.1e-5 when measured; not run here for time)."""
    model, images, references, _ = case
    theirs, _, mine, _ = _both(name, model, images, references, cams=cams, **options)
    np.testing.assert_allclose(mine, theirs, atol=1e-4)
    assert mine.max() > 0.99


@pytest.mark.slow
def test_xgradcam_within_its_division_by_channel_sums(case, cams) -> None:
    """XGrad-CAM's weights divide by each channel's activation sum; FPN channels whose signed activations nearly
    cancel magnify the graph's 1e-5 (relative) differences from torch in activations and gradients, to up to about
    5e-4 in the map (pytorch-grad-cam's own arithmetic on fusioncam's activations and gradients differs as much)."""
    model, images, references, _ = case
    theirs, _, mine, _ = _both("XGradCAM", model, images, references, cams=cams)
    np.testing.assert_allclose(mine, theirs, atol=1e-3)


@pytest.mark.slow  # two more graphs exported
def test_resized_images_and_two_layers_equal_pytorch_grad_cams() -> None:
    """The model's transform resizes 128 to 160 (boxes scaled back by 128/160 as torchvision does); the maps of
    an FPN level and a body stage aggregated as pytorch-grad-cam aggregates them."""
    model = faster_rcnn()
    model.transform.min_size, model.transform.max_size = (160,), 160
    images = torch.from_numpy(np.random.default_rng(3).random((1, 3, *SIZE)).astype(np.float32))
    with torch.no_grad():
        found = model(list(images))[0]
    references = [(found["labels"][:3].tolist(), found["boxes"][:3].numpy())]
    theirs, values, mine, cam = _both("GradCAM", model, images, references, layers=(LAYER, SECOND_LAYER))
    np.testing.assert_allclose(mine, theirs, atol=1e-4)
    np.testing.assert_allclose(cam.box_scores, values, rtol=1e-4)
    assert values[0] > 3.0


def test_refusals_name_what_to_do() -> None:
    """Methods that score masked images or ablations, class targets on the detector, the target on a classifier,
    reshape_transform, and a target count that is not one per image: each an InputError, before any export."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=5).eval()
    layer = [model.get_submodule(LAYER)]
    image = torch.zeros(1, 3, *SIZE)
    target = FasterRCNNBoxScoreTarget([1], np.float32([[0, 0, 10, 10]]))
    with pytest.raises(InputError, match="ScoreCAM is not available with FasterRCNNBoxScoreTarget.*GradCAM"):
        ours.ScoreCAM(model, layer)(image, targets=[target])
    with pytest.raises(InputError, match="FasterRCNNBoxScoreTarget\\(labels=..., bounding_boxes=...\\)"):
        ours.GradCAM(model, layer)(image, targets=[ClassifierOutputTarget(1)])
    with pytest.raises(InputError, match="FasterRCNNBoxScoreTarget\\(labels"):
        ours.GradCAM(model, layer)(image, targets=None)
    with pytest.raises(InputError, match="reshape_transform is not supported"):
        ours.GradCAM(model, layer, reshape_transform=lambda x: x)(image, targets=[target])
    with pytest.raises(InputError, match="2 FasterRCNNBoxScoreTarget targets for 1 images"):
        ours.GradCAM(model, layer)(image, targets=[target, target])
    classifier = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(InputError, match="is for a torchvision FasterRCNN"):
        ours.GradCAM(classifier, [classifier[0]])(image, targets=[target])


@pytest.mark.slow
def test_aug_smooth_equals_pytorch_grad_cams(case, cams) -> None:
    """aug_smooth: the six augmentations (flip x 0.9, 1, 1.1) each with the same references, as pytorch-grad-cam
    gives them. The references are the two best detections of each augmented image (rounded), so every augmented
    image matches some (pytorch-grad-cam fails where no image of an augmented batch matches)."""
    model, images, _, _ = case
    augmented = [images[:1].flip(-1) if flip else images[:1] for flip in (False, True)]
    with torch.no_grad():
        found = [model(list(image * factor))[0] for image in augmented for factor in (0.9, 1.0, 1.1)]
    labels = sum((f["labels"][:2].tolist() for f in found), [])
    boxes = np.round(np.concatenate([f["boxes"][:2].numpy() for f in found]))
    theirs, _, mine, _ = _both("GradCAM", model, images[:1], [(labels, boxes)], cams=cams, aug_smooth=True)
    np.testing.assert_allclose(mine, theirs, atol=1e-4)
    assert mine.max() > 0.5


@pytest.mark.slow
def test_an_image_without_a_match_gets_a_zero_map(case, cams) -> None:
    """No reference matches (pytorch-grad-cam's loss would have no gradient): the map is 0 and the target 0, and the
    other image's map is what it is alone."""
    model, images, references, _ = case
    nothing = FasterRCNNBoxScoreTarget([1], np.float32([[0, 0, 3, 3]]))
    cam = _ours(cams, "GradCAM", model, (LAYER,))
    both = cam(images, targets=[nothing, FasterRCNNBoxScoreTarget(*references[1])])
    assert cam.box_scores[0] == 0 and cam.box_scores[1] > 2.0
    alone = cam(images[1:], targets=[FasterRCNNBoxScoreTarget(*references[1])])
    assert not both[0].any()
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)
