"""Eager PyTorch reference of the seven methods for one detection instance, from the algorithm page with the
instance's score: G = d s[anchor, class] / dA (that one instance's score), and every score of a masked or
perturbed image is D-RISE's similarity of the best-matching prediction, max_a IoU(box_a, reference) x s[a, class].
It never imports fusioncam; the detector's boxes and scores come from tests/support/detection_models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tests.support.detection_models import instance_scores
from tests.support.segmentation_reference import segmentation_fusion_cam
from tests.support.torch_reference import SCORE_CHUNK, _inference_copy, _LogitsTap
from tests.support.torch_reference_methods import Pass, gradcam_plus_plus, group_cam, union_cam, xgradcam


def iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU [..., A] of boxes [..., A, 4] with one box [4] (x0, y0, x1, y1), float64."""
    boxes, box = boxes.double(), box.double()
    low = torch.maximum(boxes[..., :2], box[:2])
    high = torch.minimum(boxes[..., 2:], box[2:])
    inter = (high - low).clamp(min=0).prod(-1)
    union = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1) + (box[2:] - box[:2]).clamp(min=0).prod() - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


@dataclass
class DetectionPass(Pass):
    """Pass for one instance: G = ds[anchor, c]/dA; p(z) is the best match's IoU x class score for z."""

    reference: torch.Tensor | None = None  # [4]
    objectness: bool = False

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            parts = []
            for i in range(0, len(batch), SCORE_CHUNK):
                boxes, scores = instance_scores(self.net(batch[i : i + SCORE_CHUNK]), self.objectness)
                parts.append((iou(boxes, self.reference) * scores[..., self.c].double()).max(dim=1).values.numpy())
            return np.concatenate(parts)


def detection_pass(model, layer, image: np.ndarray, anchor: int, cls: int, reference, objectness: bool = False):
    """A, G = d s[anchor, cls] / dA of one image [3, H, W], by a hook on `layer`."""
    x = torch.as_tensor(image).detach().float()
    net, target_layer = _inference_copy(model, layer)
    captured: list[torch.Tensor] = []
    handle = target_layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            _, scores = instance_scores(net(x[None].clone().requires_grad_(True)), objectness)
            (grads,) = torch.autograd.grad(scores[0, anchor, cls], captured[0])
    finally:
        handle.remove()
    return DetectionPass(net, _LogitsTap(net), x, captured[0][0].detach().double(), grads[0].detach().double(), cls,
                         reference=torch.as_tensor(np.asarray(reference, np.float64)), objectness=objectness)


def detection_methods(model, layer, image: np.ndarray, anchor: int, cls: int, reference, objectness: bool = False,
                      theta: float = 10.0, group_and_union: bool = True) -> dict:
    """All seven maps (and Fusion-CAM's betas) of one instance; without `group_and_union` the five that need no
    masked forwards beyond Fusion-CAM's own (Group-CAM's and Union-CAM's are the costly extra ones)."""
    run = detection_pass(model, layer, image, anchor, cls, reference, objectness)
    try:
        fusion = segmentation_fusion_cam(run, theta)  # the algorithm with p(z) for every score, as for a region
        maps = {"class": run.c, "betas": fusion["betas"], "gradcam": fusion["gradcam"],
                "gradcam++": gradcam_plus_plus(run), "xgradcam": xgradcam(run), "scorecam": fusion["scorecam"],
                "fusion": fusion["fusion"]}
        if group_and_union:
            maps.update(groupcam=group_cam(run)["map"], unioncam=union_cam(run, fusion, theta)["map"])
        return maps
    finally:
        run.close()
