"""A small seeded torchvision Faster R-CNN (MobileNetV3-Large FPN, random weights, no download) for the Faster R-CNN
tests, and torchvision's own two-stage computation of one image, as the eager reference."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch

SIZE = (128, 128)
CLASSES = 5  # background + 4
SLOTS = 40  # the RPN's post_nms_top_n in eval mode
FPN_TARGET = "backbone.fpn.layer_blocks.0"  # the FPN's finest output (256 channels, the map the RoI head pools)


def faster_rcnn(seed: int = 0):
    """fasterrcnn_mobilenet_v3_large_fpn with seeded random weights, in eval mode, taking SIZE images unresized.

    Random initialisation leaves its features near 0 (about 1e-8 at the FPN with unit BatchNorm statistics), so
    every box scores the same: the BatchNorm statistics are set from one batch of random images (one train-mode
    forward with momentum 1), and the class weights are drawn with std 0.003 so scores spread over (0, 1)."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.manual_seed(seed)
    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=CLASSES)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    model.backbone.train()
    with torch.no_grad():
        model.backbone(torch.randn(4, 3, *SIZE))
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.003)
    torch.nn.init.normal_(model.roi_heads.box_predictor.bbox_pred.weight, std=0.01)
    model.eval()
    model.transform.min_size, model.transform.max_size = (SIZE[0],), SIZE[0]  # no resizing: the bundle's size
    model.rpn._post_nms_top_n["testing"] = SLOTS
    model.roi_heads.score_thresh = 0.0  # keep low-scoring detections to compare
    model.roi_heads.detections_per_img = 30
    return model


def normalised(model, images):
    """(images - image_mean) / image_std, as the model's transform does (no resizing at SIZE)."""
    mean = torch.tensor(model.transform.image_mean)[:, None, None]
    std = torch.tensor(model.transform.image_std)[:, None, None]
    return (torch.as_tensor(images) - mean) / std


def proposals(model, image: torch.Tensor) -> torch.Tensor:
    """torchvision's RPN proposals [P, 4] of one normalised image [3, H, W] (its own per-image loop and NMS)."""
    from torchvision.models.detection.image_list import ImageList

    with torch.no_grad():
        features = model.backbone(image[None])
        boxes, _ = model.rpn(ImageList(image[None], [tuple(image.shape[1:])]), features)
    return boxes[0]


def box_head_scores(model, image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax class scores [B, C], refined boxes [B, C, 4]) of the RoI head for `boxes` on one normalised image,
    with torchvision's own MultiScaleRoIAlign, box head, predictor and box coder; differentiable in the image."""
    from torchvision.ops.boxes import clip_boxes_to_image

    heads = model.roi_heads
    features = model.backbone(image[None])
    size = [tuple(image.shape[1:])]
    logits, regression = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [boxes], size)))
    refined = clip_boxes_to_image(heads.box_coder.decode(regression, [boxes]), size[0])
    return torch.softmax(logits, dim=-1), refined


@functools.lru_cache(maxsize=None)
def exported_bundle(target: str | None = FPN_TARGET) -> Path:
    """The detection bundle of faster_rcnn() at `target` (None: the default, the FPN levels the RoI head pools),
    exported once per test process (the export takes about
    half a minute) into a temporary folder removed at exit; tests read it and never change it."""
    import fusioncam

    folder = Path(tempfile.mkdtemp(prefix="frcnn-bundle-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    bundle = folder / "frcnn.fcam"
    fusioncam.export_torch(faster_rcnn(), target, bundle, input_size=SIZE, task="detection")
    return bundle
