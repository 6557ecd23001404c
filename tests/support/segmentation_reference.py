"""Eager PyTorch reference of the segmentation definitions (docs/segmentation.md), written from the page, not the graph;
never imports fusioncam. The seven methods reuse the classifier reference (torch_reference*.py) with G = dS/dA and
every score the region probability P.

Regions are given per image as a float mask [H, W] at the input resolution, or None for "where the model predicts
the class"; a target of -1 is the class predicted on most output pixels (ties: the lowest index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tests.support.torch_reference import SCORE_CHUNK, _inference_copy, _LogitsTap, norm, normalised_pair, up
from tests.support.torch_reference_methods import Pass, gradcam_plus_plus, group_cam, union_cam, weighted_map, xgradcam

PREDICTED = -1.0  # the fill value of a region row asking for the predicted region (segmentation_graph.PREDICTED_REGION)


def class_scores(output) -> torch.Tensor:
    """Per-pixel class scores of a torchvision (dict `out`), Hugging Face (`.logits`) or plain model's output."""
    if getattr(output, "logits", None) is not None:
        return output.logits
    return output["out"] if isinstance(output, dict) else output


def largest_class(scores: torch.Tensor) -> int:
    """The class predicted on most pixels of one image's scores [C, H', W'] (ties: the lowest index)."""
    counts = torch.bincount(scores.argmax(0).flatten(), minlength=scores.shape[0])
    return int(torch.argmax(counts))  # torch.argmax returns the first maximum


def region_weights(scores: torch.Tensor, cls: int, region) -> torch.Tensor:
    """w [H', W'] for one image: the area-resized mask, or the predicted region of `cls` when `region` is None."""
    if region is None:
        return (scores.argmax(0) == cls).float()
    mask = torch.as_tensor(np.asarray(region, dtype=np.float32))[None, None]
    return F.interpolate(mask, size=tuple(scores.shape[-2:]), mode="area")[0, 0]


def resolve(scores: torch.Tensor, targets, regions) -> tuple[list[int], torch.Tensor]:
    """(class per image, region weights [N, H', W']) from targets (-1 = largest class) and regions (None = predicted)."""
    classes = [largest_class(scores[i]) if t < 0 else int(t) for i, t in enumerate(targets)]
    weights = torch.stack([region_weights(scores[i].detach(), classes[i], regions[i]) for i in range(len(classes))])
    return classes, weights


def region_score(scores: torch.Tensor, classes: list[int], weights: torch.Tensor) -> torch.Tensor:
    """S [N] = sum over pixels of w * y_c (pytorch-grad-cam's SemanticSegmentationTarget, mask at H' x W')."""
    picked = scores[torch.arange(len(classes)), torch.as_tensor(classes)]
    return (picked * weights).sum(dim=(1, 2))


def region_probability(scores: torch.Tensor, classes: list[int], weights: torch.Tensor) -> torch.Tensor:
    """P [N] = sum w * softmax_k(y)_c / sum w (0 for an empty region)."""
    probs = torch.softmax(scores, dim=1)[torch.arange(len(classes)), torch.as_tensor(classes)]
    return (probs * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp_min(1e-12)


def activations_and_gradients(model, layer, images: np.ndarray, targets, regions):
    """(scores, A, dS/dA, classes, weights) by torch autograd with a forward hook on `layer` (a module)."""
    captured = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        x = torch.from_numpy(images)
        scores = class_scores(model(x))
    finally:
        handle.remove()
    classes, weights = resolve(scores.detach(), targets, regions)
    (gradients,) = torch.autograd.grad(region_score(scores, classes, weights).sum(), captured[0])
    return scores.detach(), captured[0].detach(), gradients, classes, weights


def region_array(regions, size: tuple[int, int]) -> np.ndarray:
    """The explain graph's `region` input [N, H, W] for per-image masks (None = predicted, filled with -1)."""
    return np.stack([np.full(size, PREDICTED, np.float32) if r is None else np.asarray(r, np.float32)
                     for r in regions])


def box_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A float mask [H, W] with ones inside the box (x0, y0, x1, y1), x1/y1 exclusive."""
    mask = np.zeros(size, np.float32)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1.0
    return mask


# ----- the seven methods for a class over a region (docs/segmentation.md), one image at a time -----------------------


@dataclass
class SegmentationPass(Pass):
    """torch_reference_methods.Pass for a segmentation model: G = dS/dA, and p(z) is the region probability P(z)
    with the region weights fixed from the explained image."""

    weights: torch.Tensor | None = None  # [H', W'] float64

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            parts = []
            for i in range(0, len(batch), SCORE_CHUNK):
                scores = class_scores(self.net(batch[i : i + SCORE_CHUNK])).double()
                n = scores.shape[0]
                parts.append(region_probability(scores, [self.c] * n, self.weights.expand(n, -1, -1)).numpy())
            return np.concatenate(parts)


def segmentation_pass(model, layer, image: np.ndarray, target: int, region) -> SegmentationPass:
    """A, G = dS/dA, the class and region weights of one image [3, H, W] (target -1: the largest class)."""
    x = torch.as_tensor(image).detach().float()
    net, target_layer = _inference_copy(model, layer)
    captured: list[torch.Tensor] = []
    handle = target_layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            scores = class_scores(net(x[None].clone().requires_grad_(True)))
            classes, weights = resolve(scores.detach(), [target], [region])
            (grads,) = torch.autograd.grad(region_score(scores, classes, weights).sum(), captured[0])
    finally:
        handle.remove()
    return SegmentationPass(net, _LogitsTap(net), x, captured[0][0].detach().double(), grads[0].detach().double(),
                            classes[0], weights=weights[0].double())


def segmentation_fusion_cam(run: SegmentationPass, theta: float = 10.0, channels=None) -> dict:
    """Grad-CAM, Score-CAM (s_k = P(x * M_k)) and Fusion-CAM with P for every score, as on the algorithm page.

    `channels` (fast mode): only these channel indices are scored and share Score-CAM's softmax; the rest weigh 0."""
    A, G, x, size = run.A, run.G, run.x, run.size
    L_grad = weighted_map(A, G.mean(dim=(1, 2)), size)
    scored = list(range(A.shape[0])) if channels is None else sorted(int(k) for k in channels)
    masks = torch.stack([norm(up(A[k], size)) for k in scored])
    scores = torch.from_numpy(run.probabilities((x[None] * masks[:, None]).float()))
    a = torch.zeros(A.shape[0], dtype=torch.float64)
    a[scored] = torch.softmax(scores, dim=0)
    L_reg = norm(torch.relu(sum(a[k] * up(A[k], size) for k in range(A.shape[0]))))
    t = float(np.percentile(L_grad.numpy(), theta))
    L_den = norm(torch.where(L_grad < t, torch.zeros_like(L_grad), L_grad))
    b0 = float(run.probabilities(torch.zeros_like(x)[None])[0])
    p_den, p_reg = run.probabilities(torch.stack([x * L_den.float(), x * L_reg.float()]))
    b_den, b_reg, degenerate_1 = normalised_pair(float(p_den) - b0, float(p_reg) - b0)
    L_dr = norm(b_den * L_den + b_reg * L_reg)
    p_dr = float(run.probabilities((x * L_dr.float())[None])[0])
    b_dr, b_reg2, degenerate_2 = normalised_pair(p_dr - b0, b_reg)
    L1, L2 = b_dr * L_dr, b_reg2 * L_reg
    similarity = torch.clamp(1 - (L1 - L2).abs(), 0, 1)
    fusion = norm(similarity * torch.maximum(L1, L2) + (1 - similarity) * (L1 + L2) / 2)
    return {"gradcam": L_grad.numpy(), "scorecam": L_reg.numpy(), "fusion": fusion.numpy(),
            "betas": {"b_den": b_den, "b_reg": b_reg, "b_dr": b_dr, "b_reg2": b_reg2, "b0": b0},
            "scorecam_scores": scores.numpy()}


def segmentation_methods(model, layer, image: np.ndarray, target: int, region, theta: float = 10.0) -> dict:
    """All seven maps (and Fusion-CAM's betas) of one image for a class over a region."""
    run = segmentation_pass(model, layer, image, target, region)
    try:
        fusion = segmentation_fusion_cam(run, theta)
        return {"class": run.c, "betas": fusion["betas"], "gradcam": fusion["gradcam"],
                "gradcam++": gradcam_plus_plus(run), "xgradcam": xgradcam(run), "scorecam": fusion["scorecam"],
                "groupcam": group_cam(run)["map"], "unioncam": union_cam(run, fusion, theta)["map"],
                "fusion": fusion["fusion"]}
    finally:
        run.close()
