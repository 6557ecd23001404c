"""pytorch-grad-cam's target objects (`pytorch_grad_cam.utils.model_targets`), for fusioncam's graphs.

fusioncam differentiates inside an exported ONNX graph, so a target is not run as Python: each class here names a
score the graph computes. `ClassifierOutputTarget(c)` (the logit of class c) and `SemanticSegmentationTarget(c,
mask)` (class c's scores summed over the mask), and `FasterRCNNBoxScoreTarget` on a torchvision Faster R-CNN
(pytorch_grad_cam/box_score_target.py) are what the graphs compute; the others are accepted by name so code
written for pytorch-grad-cam imports unchanged, and a CAM given one raises an InputError naming the supported
targets (never a map of another score). Each is also callable on a torch output, as in pytorch-grad-cam, so metric
code that calls targets keeps working.
"""

from __future__ import annotations

import numpy as np


class ClassifierOutputTarget:
    """The logit of class `category` (pytorch-grad-cam's ClassifierOutputTarget)."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output):
        if len(model_output.shape) == 1:
            return model_output[self.category]
        return model_output[:, self.category]


class ClassifierOutputSoftmaxTarget:
    """The softmax probability of class `category`: usable as a metric target; not a CAM target in fusioncam."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output):
        import torch

        if len(model_output.shape) == 1:
            return torch.softmax(model_output, dim=-1)[self.category]
        return torch.softmax(model_output, dim=-1)[:, self.category]


class BinaryClassifierOutputTarget:
    """A one-logit model's output, negated for category 0: not a CAM target in fusioncam."""

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output):
        return model_output * (1 if self.category == 1 else -1)


class RawScoresOutputTarget:
    """The model's raw output: not a CAM target in fusioncam."""

    def __call__(self, model_output):
        return model_output


class SemanticSegmentationTarget:
    """Class `category`'s per-pixel scores summed over `mask` [H', W'] (the model output's resolution)."""

    def __init__(self, category: int, mask) -> None:
        self.category = category
        self.mask = np.asarray(mask.detach().cpu().numpy() if hasattr(mask, "detach") else mask, dtype=np.float32)

    def __call__(self, model_output):
        import torch

        mask = torch.as_tensor(self.mask, device=model_output.device)
        return (model_output[self.category, :, :] * mask).sum()


class FasterRCNNBoxScoreTarget:
    """pytorch-grad-cam's detection target: for each reference box (with its label), the detection of the model's
    output (a torchvision detector's dict of `boxes`, `labels`, `scores`) with the largest IoU; where that IoU is
    above `iou_threshold` and the label is the same, IoU + score is added; the target is the sum over reference
    boxes (so it mixes objects). Callable on torch outputs, as in pytorch-grad-cam, for metric code. A CAM class of
    fusioncam.pytorch_grad_cam given it with a torchvision Faster R-CNN computes this sum and its gradient in an
    exported graph (pytorch_grad_cam/box_score_target.py; pytorch-grad-cam's own FasterRCNNBoxScoreTarget works
    the same); Explainer bundles do not take it (they explain one instance at a time, fusioncam/tasks/detection.py)."""

    def __init__(self, labels, bounding_boxes, iou_threshold: float = 0.5) -> None:
        self.labels = labels
        self.bounding_boxes = bounding_boxes
        self.iou_threshold = iou_threshold

    def __call__(self, model_outputs):
        import torch
        import torchvision

        boxes = model_outputs["boxes"]
        output = torch.zeros(1, device=boxes.device, dtype=boxes.dtype)
        if len(boxes) == 0:
            return output
        for box, label in zip(self.bounding_boxes, self.labels):
            box = torch.as_tensor(box, device=boxes.device, dtype=boxes.dtype).reshape(1, 4)
            ious = torchvision.ops.box_iou(box, boxes)[0]
            best = ious.argmax()
            if ious[best] > self.iou_threshold and model_outputs["labels"][best] == label:
                output = output + ious[best] + model_outputs["scores"][best]
        return output


__all__ = ["ClassifierOutputTarget", "ClassifierOutputSoftmaxTarget", "BinaryClassifierOutputTarget",
           "RawScoresOutputTarget", "SemanticSegmentationTarget", "FasterRCNNBoxScoreTarget"]
