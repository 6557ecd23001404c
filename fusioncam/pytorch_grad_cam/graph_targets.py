"""pytorch-grad-cam targets as what fusioncam's explain graphs take: a class per image, for a segmentation model
a region mask per image, and for the targets that are not one logit (softmax probability, a binary model's signed
logit, the sum of raw scores) the weights of the backward seed (target_seed_graph.py). Objects are read by class name
and attributes, so pytorch-grad-cam's own target objects work as well as
fusioncam.pytorch_grad_cam.utils.model_targets'; anything else is an InputError naming what is supported."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

SUPPORTED = ("None (each image's top class), class indices, ClassifierOutputTarget(category), "
             "ClassifierOutputSoftmaxTarget(category), BinaryClassifierOutputTarget(category), RawScoresOutputTarget() "
             "and SemanticSegmentationTarget(category, mask)")
LOGIT_SEED = (1.0, 0.0, 0.0)  # (one-hot logit, softmax probability, every raw score): see target_seed_graph.py


@dataclass(frozen=True)
class GraphTargets:
    """The explain graph's inputs for N images: classes (None: each image's top class) and, for a segmentation
    model, one region mask per image."""

    classes: list[int] | None
    regions: list[np.ndarray] | None = None
    # float32 [N, 3] seed weights (logit, softmax, raw scores) per image and the binary targets' signs are in the
    # logit column; None when every target is one logit (the bundle's own explain graph computes it)
    seeds: np.ndarray | None = None
    binary: bool = False  # some target is a BinaryClassifierOutputTarget (a one-logit model's)

    @property
    def segmentation(self) -> bool:
        return self.regions is not None

    def repeated(self, times: int) -> "GraphTargets":
        """The same targets for `times` copies of the batch (the augmentations of aug_smooth)."""
        return GraphTargets(None if self.classes is None else self.classes * times,
                            None if self.regions is None else self.regions * times,
                            None if self.seeds is None else np.tile(self.seeds, (times, 1)), self.binary)


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
    kinds = {region is not None for _, region, _ in read}
    if len(kinds) > 1:
        raise InputError("targets mix SemanticSegmentationTarget with classifier targets; a model is explained as a "
                         "classifier or as a segmentation model, not both in one call")
    classes = [c for c, _, _ in read]
    if kinds == {True}:
        return GraphTargets(classes, [region for _, region, _ in read])
    seeds = np.float32([seed for _, _, seed in read])
    binary = any(type(t).__name__ == "BinaryClassifierOutputTarget" for t in items)
    if not binary and (seeds == np.float32(LOGIT_SEED)).all():
        return GraphTargets(classes)
    return GraphTargets(classes, seeds=seeds, binary=binary)


def _read_target(target, index: int) -> tuple[int, np.ndarray | None, tuple[float, float, float]]:
    """One target as (class, region mask or None, seed weights); class -1 is the arg-max."""
    if isinstance(target, (bool, np.bool_)):
        raise InputError(f"targets[{index}] is a bool; give a class index or a target object ({SUPPORTED})")
    if isinstance(target, (int, np.integer)):
        return int(target), None, LOGIT_SEED
    if hasattr(target, "item") and getattr(target, "ndim", None) == 0:  # a NumPy or torch scalar
        return int(target.item()), None, LOGIT_SEED
    kind = type(target).__name__
    if kind == "ClassifierOutputTarget" and hasattr(target, "category"):
        return _category(target, index), None, LOGIT_SEED
    if kind == "ClassifierOutputSoftmaxTarget" and hasattr(target, "category"):
        return _category(target, index), None, (0.0, 1.0, 0.0)
    if kind == "BinaryClassifierOutputTarget" and hasattr(target, "category"):
        # pytorch-grad-cam's: the model's one output times +1 for category 1, -1 otherwise
        return 0, None, (1.0 if _category(target, index) == 1 else -1.0, 0.0, 0.0)
    if kind == "RawScoresOutputTarget":
        return -1, None, (0.0, 0.0, 1.0)
    if kind == "SemanticSegmentationTarget" and hasattr(target, "category") and hasattr(target, "mask"):
        mask = target.mask
        mask = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        if mask.ndim != 2:
            raise InputError(f"targets[{index}]: SemanticSegmentationTarget's mask must be [H, W]; got shape "
                             f"{tuple(mask.shape)}")
        return _category(target, index), np.ascontiguousarray(mask, dtype=np.float32), LOGIT_SEED
    raise InputError(f"targets[{index}] is {kind}: fusioncam computes gradients inside the exported graph, so a "
                     f"target must be one the graph computes: {SUPPORTED}. An arbitrary callable (another score "
                     f"of the outputs) is not supported as a CAM target")


def _category(target, index: int) -> int:
    category = target.category
    if hasattr(category, "item"):
        category = category.item()
    if isinstance(category, (bool, np.bool_)) or not isinstance(category, (int, np.integer)):
        raise InputError(f"targets[{index}]: {type(target).__name__}.category must be a class index; got "
                         f"{category!r}")
    return int(category)
