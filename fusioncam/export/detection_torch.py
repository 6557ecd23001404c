"""`export_torch_detection`: a PyTorch dense detector becomes a detection bundle, cut before its NMS.

Two kinds of module:

- torchvision RetinaNet, FCOS, SSD (SSD300, SSDlite): their head outputs are taken before `postprocess_detections`
  and turned into the "yolov8" layout [N, 4 + C, A] by `TorchvisionDenseOutputs`, which decodes every anchor's box
  with the model's own anchors (its anchor generator run once at the export's input size: constants in the graph)
  and box coder (in-graph), and activates the class scores as the model's postprocess does: RetinaNet sigmoid(logit),
  FCOS sqrt(sigmoid(logit) x sigmoid(centerness)), SSD softmax over classes with the background column (label 0)
  set to 0, so class indices are torchvision's labels. The model's GeneralizedRCNNTransform is not part of the
  graph: the bundle's images are the input size given (no resizing inside) and normalised with the model's own
  image_mean / image_std (inputs are RGB in [0, 1] before them). The boxes are not clipped to the image.
- any other module must return the raw output itself in `layout` ("yolov8" or "yolov5", detection_graph.py).

The module goes through the legacy TorchScript exporter (dynamo=False: the dynamo exporter fails on these models'
NMS; here NMS is not even traced), with each target map kept as a tensor (a feature pyramid named as the target is
one map per level, feature_levels.py), then the ONNX rule (detection_export.py) builds the graphs.
"""

from __future__ import annotations

import os

from ..bundle import check_bundle_destination
from ..errors import LayerError, ModelLoadError
from .detection_export import write_detection_bundle
from .detection_graph import checked_layout, prepare_detector
from .feature_levels import LevelsWrapper, level_selectors, resolve_levels, target_list, with_skipped_levels

TORCHVISION_DENSE = ("RetinaNet", "FCOS", "SSD")


def torchvision_kind(model) -> str | None:
    """"RetinaNet", "FCOS" or "SSD" for those torchvision detectors (SSDlite is an SSD), else None."""
    module = type(model).__module__
    name = type(model).__name__
    return name if module.startswith("torchvision.models.detection") and name in TORCHVISION_DENSE else None


def TorchvisionDenseOutputs(model, input_size: tuple[int, int]):  # noqa: N802 (a module factory)
    """A module: images [N, 3, H, W] (normalised) -> [N, 4 + C, A] boxes cx, cy, w, h and activated class scores
    of every anchor, from a torchvision RetinaNet, FCOS or SSD in eval mode (see the module docstring)."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    kind = torchvision_kind(model)

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            with torch.no_grad():
                zeros = torch.zeros(1, 3, *input_size)
                features = self._features(zeros)
                anchors = model.anchor_generator(ImageList(zeros, [tuple(input_size)]), features)[0]
            self.register_buffer("anchors", anchors.detach().clone())

        def _features(self, x):
            features = self.model.backbone(x)
            return list(features.values()) if isinstance(features, dict) else [features]

        def forward(self, x):
            head = self.model.head(self._features(x))
            regression, logits = head["bbox_regression"], head["cls_logits"]
            n, count = regression.shape[0], regression.shape[1]
            if kind == "FCOS":
                boxes = self.model.box_coder.decode(regression, self.anchors)
                scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(head["bbox_ctrness"]))
            else:
                flat_anchors = self.anchors[None].expand(n, count, 4).reshape(-1, 4)
                boxes = self.model.box_coder.decode_single(regression.reshape(-1, 4), flat_anchors).reshape(n, count, 4)
                if kind == "RetinaNet":
                    scores = torch.sigmoid(logits)
                else:
                    probabilities = torch.softmax(logits, dim=-1)
                    keep = torch.ones(probabilities.shape[-1], dtype=probabilities.dtype)
                    keep[0] = 0  # the background class is no detection
                    scores = probabilities * keep
            centre = (boxes[..., :2] + boxes[..., 2:]) / 2
            size = boxes[..., 2:] - boxes[..., :2]
            return torch.cat([centre, size, scores], dim=-1).transpose(1, 2)

    return Outputs()


def export_torch_detection(model, target_layer: str | list[str] | None, out: str | os.PathLike,
                           input_size: tuple[int, int] = (320, 320), *, layout: str | None = None, mean=None, std=None,
                           class_names: list[str] | None = None, fp16_scorer: bool = False):
    """A detection bundle from a torch.nn.Module: a torchvision RetinaNet/FCOS/SSD (layout None), or a module whose
    output is the raw head output in `layout`. `target_layer` is a module path of `model`, a feature pyramid
    whose every level is a target (e.g. "backbone.fpn"), one level ("backbone.fpn['p6']"), or a list of them
    (feature_levels.py); torchvision default: the FPN's levels (RetinaNet, FCOS), SSD's last `backbone.features`
    block. mean/std default to the torchvision model's own, else 0 and 1."""
    import torch

    from .torch_export import _inference_copy, export_features_wrapper, state_sha256

    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"export_torch_detection needs a torch.nn.Module, got {type(model).__name__}")
    from .detection_queries import export_torch_query_detection, query_kind

    if query_kind(model) is not None and layout is None:  # transformers DETR, Conditional DETR, YOLOS, RT-DETR
        return export_torch_query_detection(model, target_layer, out, input_size, mean=mean, std=std,
                                            class_names=class_names, fp16_scorer=fp16_scorer)
    from .faster_rcnn import export_torch_faster_rcnn, is_faster_rcnn

    if is_faster_rcnn(model) and layout is None:  # torchvision Faster R-CNN (two-stage: proposals held fixed)
        return export_torch_faster_rcnn(model, target_layer, out, input_size, mean=mean, std=std,
                                        class_names=class_names, fp16_scorer=fp16_scorer)
    targets = target_list(target_layer)
    check_bundle_destination(out)
    kind = torchvision_kind(model)
    if kind is None and layout is None:
        raise ModelLoadError(f"{type(model).__name__} is not a torchvision RetinaNet, FCOS or SSD: give layout= "
                             f"('yolov8' or 'yolov5') for the raw output the module returns")
    layout = checked_layout(layout or "yolov8")
    if kind is not None and layout != "yolov8":
        raise ModelLoadError(f"a torchvision {kind} is exported in the yolov8 layout (boxes and activated scores per "
                             f"anchor); leave layout out")
    copy = _inference_copy(model)
    if kind is not None:
        transform = copy.transform
        mean = tuple(transform.image_mean) if mean is None else mean
        std = tuple(transform.image_std) if std is None else std
    picked = targets is None
    if picked:
        default = _default_torchvision_target(copy) if kind is not None else None
        if default is None:
            raise LayerError("give target_layer (a module path; see fusioncam.list_layers(model))")
        targets = [default]
    source = f"{type(model).__name__} (PyTorch)"
    net = TorchvisionDenseOutputs(copy, tuple(input_size)) if kind is not None else copy
    prefix = "model." if kind is not None else ""

    def raw_output(output):
        if not isinstance(output, torch.Tensor) or output.dim() != 3:
            raise ModelLoadError(f"{source} returns {type(output).__name__}; a detector exported with layout "
                                 f"{layout!r} must return its raw head output as one tensor [N, ., .]")
        return output

    example = torch.zeros(2, 3, *input_size)
    selectors, skipped = level_selectors(net, prefix, targets, example)
    wrapper = LevelsWrapper(net, prefix, selectors, raw_output)
    with torch.no_grad():
        wrapper(example)
    exported = export_features_wrapper(wrapper, example, "detector", features=len(selectors))
    detector = prepare_detector(exported, source, layout, tuple(input_size))
    layers = resolve_levels(detector, selectors)
    result = write_detection_bundle(
        detector, layers, out, target_label=[selector.label for selector in selectors], source=source,
        source_sha256=state_sha256(model), mean=(0.0, 0.0, 0.0) if mean is None else mean,
        std=(1.0, 1.0, 1.0) if std is None else std, class_names=class_names, picked_automatically=picked,
        fp16_scorer=fp16_scorer, picking_rule=TORCHVISION_PICKING_RULE,
        nms_iou_threshold=float(copy.nms_thresh) if kind is not None else None)  # RetinaNet/FCOS/SSD's own
    return with_skipped_levels(result, skipped)


TORCHVISION_PICKING_RULE = ("the feature pyramid's levels (backbone.fpn: every level the head reads, each level's "
                            "map made and the maps combined), or, without one, the last backbone.features block")


def _default_torchvision_target(model) -> str | None:
    """The feature pyramid (RetinaNet, FCOS: backbone.fpn, every level), else the last backbone.features block
    (SSD)."""
    modules = dict(model.named_modules())
    if "backbone.fpn" in modules:
        return "backbone.fpn"
    for path in ("backbone.body.layer4", "backbone.body.layer3"):
        if path in modules:
            return path
    blocks = [name for name in modules if name.startswith("backbone.features.") and name.count(".") == 2]
    return blocks[-1] if blocks else None


__all__ = ["TorchvisionDenseOutputs", "export_torch_detection", "torchvision_kind"]
