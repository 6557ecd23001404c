"""pytorch-grad-cam targets as what fusioncam's explain graphs take: a class per image, and for a segmentation model
a region mask per image. Objects are read by class name and attributes, so pytorch-grad-cam's own target objects work
as well as fusioncam.pytorch_grad_cam.utils.model_targets'; anything else is an InputError naming what is supported."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

SUPPORTED = ("None (each image's top class), class indices, ClassifierOutputTarget(category) and "
             "SemanticSegmentationTarget(category, mask)")


@dataclass(frozen=True)
class GraphTargets:
    """The explain graph's inputs for N images: classes (None: each image's top class) and, for a segmentation
    model, one region mask per image."""

    classes: list[int] | None
    regions: list[np.ndarray] | None = None

    @property
    def segmentation(self) -> bool:
        return self.regions is not None

    def repeated(self, times: int) -> "GraphTargets":
        """The same targets for `times` copies of the batch (the augmentations of aug_smooth)."""
        return GraphTargets(None if self.classes is None else self.classes * times,
                            None if self.regions is None else self.regions * times)


def graph_targets(targets, n: int) -> GraphTargets:
    """Targets as given to a CAM call (None, one target for every image, or one per image) for N images."""
    if targets is None:
        return GraphTargets(None)
    if hasattr(targets, "tolist") and not hasattr(targets, "category"):  # a NumPy or torch array of classes
        targets = targets.tolist()
    items = list(targets) if isinstance(targets, (list, tuple)) else [targets]
    if len(items) == 1 and n > 1:
        items = items * n
    if len(items) != n:
        raise InputError(f"targets: {len(items)} given for {n} images; give one per image, one for all, or None")
    read = [_read_target(t, i) for i, t in enumerate(items)]
    kinds = {region is not None for _, region in read}
    if len(kinds) > 1:
        raise InputError("targets mix SemanticSegmentationTarget with classifier targets; a model is explained as a "
                         "classifier or as a segmentation model, not both in one call")
    classes = [c for c, _ in read]
    if kinds == {True}:
        return GraphTargets(classes, [region for _, region in read])
    return GraphTargets(classes)


def _read_target(target, index: int) -> tuple[int, np.ndarray | None]:
    """One target as (class, region mask or None)."""
    if isinstance(target, (bool, np.bool_)):
        raise InputError(f"targets[{index}] is a bool; give a class index or a target object ({SUPPORTED})")
    if isinstance(target, (int, np.integer)):
        return int(target), None
    if hasattr(target, "item") and getattr(target, "ndim", None) == 0:  # a NumPy or torch scalar
        return int(target.item()), None
    kind = type(target).__name__
    if kind == "ClassifierOutputTarget" and hasattr(target, "category"):
        return _category(target, index), None
    if kind == "SemanticSegmentationTarget" and hasattr(target, "category") and hasattr(target, "mask"):
        mask = target.mask
        mask = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        if mask.ndim != 2:
            raise InputError(f"targets[{index}]: SemanticSegmentationTarget's mask must be [H, W]; got shape "
                             f"{tuple(mask.shape)}")
        return _category(target, index), np.ascontiguousarray(mask, dtype=np.float32)
    raise InputError(f"targets[{index}] is {kind}: fusioncam computes gradients inside the exported graph, so a "
                     f"target must be one the graph computes: {SUPPORTED}. Other scores (softmax, binary, raw "
                     f"scores, arbitrary callables) are not supported as CAM targets")


def _category(target, index: int) -> int:
    category = target.category
    if hasattr(category, "item"):
        category = category.item()
    if isinstance(category, (bool, np.bool_)) or not isinstance(category, (int, np.integer)):
        raise InputError(f"targets[{index}]: {type(target).__name__}.category must be a class index; got "
                         f"{category!r}")
    return int(category)
