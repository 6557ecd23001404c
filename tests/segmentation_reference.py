"""Eager PyTorch reference of the segmentation definitions (docs/segmentation.md), written from the page, not the graph.

Regions are given per image as a float mask [H, W] at the input resolution, or None for "where the model predicts
the class"; a target of -1 is the class predicted on most output pixels (ties: the lowest index).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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
