"""fusioncam.pytorch_grad_cam.utils.model_targets.FasterRCNNBoxScoreTarget against pytorch-grad-cam's own on a seeded
torchvision Faster R-CNN: the same score and the same autograd gradient at a backbone layer, the same Grad-CAM map
when pytorch-grad-cam's GradCAM runs each; the classifier and segmentation targets' reader refuses it by name (CAMs on
a torchvision Faster R-CNN take it: test_faster_rcnn_box_score_cam.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusioncam.errors import InputError
from fusioncam.pytorch_grad_cam.graph_targets import graph_targets
from fusioncam.pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from tests.support.faster_rcnn_models import SIZE, faster_rcnn

pytest.importorskip("pytorch_grad_cam")
pytestmark = pytest.mark.slow  # several forwards and backwards of the two-stage detector


def _references(found: dict) -> tuple[list[int], np.ndarray]:
    """Labels and boxes: two detections as reported, one shifted by 4 pixels, one with a label it does not have,
    one far from every detection (IoU below the threshold)."""
    boxes = found["boxes"].detach().numpy()
    labels = found["labels"].tolist()
    shifted = boxes[2] + 4.0
    return ([labels[0], labels[1], labels[2], (labels[3] % 4) + 1 if labels[3] != labels[0] else 9, labels[4]],
            np.stack([boxes[0], boxes[1], shifted, boxes[3], np.array([0, 0, 3, 3], np.float32)]))


def test_score_and_gradient_equal_pytorch_grad_cams() -> None:
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget as Theirs

    model = faster_rcnn()
    image = torch.from_numpy(np.random.default_rng(1).random((3, *SIZE)).astype(np.float32))
    with torch.no_grad():
        found = model([image])[0]
    labels, boxes = _references(found)
    layer = model.get_submodule("backbone.fpn.layer_blocks.0")
    values, grads = [], []
    for target in (FasterRCNNBoxScoreTarget(labels, boxes), Theirs(labels, boxes)):
        captured = []
        handle = layer.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            score = target(model([image])[0])
            (grad,) = torch.autograd.grad(score.sum(), captured[0])
        finally:
            handle.remove()
        values.append(float(score.sum().detach()))
        grads.append(grad.numpy())
    assert values[0] == values[1] and 2.0 < values[0] < 7.0  # three matches of IoU + score, two without
    np.testing.assert_array_equal(grads[0], grads[1])
    assert np.abs(grads[0]).max() > 0


def test_pytorch_grad_cams_gradcam_gives_the_same_map_with_either_target() -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget as Theirs

    model = faster_rcnn()
    image = torch.from_numpy(np.random.default_rng(2).random((3, *SIZE)).astype(np.float32))
    with torch.no_grad():
        found = model([image])[0]
    labels, boxes = _references(found)
    maps = []
    for target in (FasterRCNNBoxScoreTarget(labels, boxes), Theirs(labels, boxes)):
        with GradCAM(model, target_layers=[model.get_submodule("backbone.fpn.layer_blocks.0")]) as cam:
            maps.append(cam(image[None], targets=[target])[0])
    np.testing.assert_array_equal(maps[0], maps[1])
    assert maps[0].max() > 0


def test_a_fusioncam_cam_refuses_it() -> None:
    target = FasterRCNNBoxScoreTarget([1], np.array([[0, 0, 10, 10]], np.float32))
    with pytest.raises(InputError, match="FasterRCNNBoxScoreTarget"):
        graph_targets([target], 1)
