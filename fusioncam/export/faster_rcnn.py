"""torchvision Faster R-CNN as a detection bundle: each proposal slot is an instance, its score the RoI head's
softmax for the proposal box, held fixed.

A two-stage detector is not differentiable in its proposals: the RPN's boxes come out of a top-k and NMS, and
torchvision itself detaches them (`pred_bbox_deltas.detach()` in its RPN) and gives roi_align's boxes no gradient.
So the instance's score is what torchvision reports for a detection: softmax(box_predictor(box_head(
MultiScaleRoIAlign(FPN features, proposal box))))[class], a function of the image through the FPN features, with the
proposal box a constant. `FasterRCNNOutputs` runs the whole detector on a batch, written batched (no per-image loop,
so the graph keeps a dynamic batch), and returns the "yolov8" layout of detection_graph.py, [N, 4 + C, P], one
column per proposal slot:

- the RPN as torchvision runs it in eval mode: head, the anchors (generated once at the export's input size:
  constants), box decoding, per-level top-k (pre_nms_top_n), sigmoid, boxes clipped to the image, boxes under
  min_size and scores under score_thresh dropped, NMS per image and level at nms_thresh (one NonMaxSuppression over
  all images and levels, boxes offset per group as torchvision's batched_nms does), the best post_nms_top_n per image
  in score order. P = min(post_nms_top_n, the anchors the top-k keeps): slots past an image's proposal count are
  padding (box 0, scores 0);
- MultiScaleRoIAlign on the slots' proposal boxes (each box's level by torchvision's LevelMapper; the boxes of each
  level gathered and pooled on that level only, written back at their rows: one RoiAlign per box, as torchvision's
  pooler does), the box head and predictor;
- scores: softmax over the C classes with the background column (label 0) set to 0, so class indices are
  torchvision's labels; a slot's score for class c is exactly the score torchvision reports for that proposal's
  detection of class c (its postprocess_detections takes the same softmax);
- a slot's box: the proposal refined by the box regression of its best non-background class, clipped to the image
  (torchvision's detection box for that class). Boxes of other classes are not in the output: an instance named by
  (class, box) is matched against each slot's best-class box.

The proposal boxes (before the RoI head) and the output boxes pass through a `HeldFixed` module: its ONNX nodes are
renamed under autodiff.HELD_FIXED, which the gradient walk treats as constants (torchvision's detach). What the
masked-image scorer computes is D-RISE's similarity over the slots of the masked image (the whole detector, RPN
included, runs again on it), as for the dense families.

The model's GeneralizedRCNNTransform (resizing) is not in the graph: the bundle's images are the export's input size,
normalised with the model's image_mean / image_std.
"""

from __future__ import annotations

import os

from ..bundle import check_bundle_destination
from ..errors import LayerError, ModelLoadError

HELD_FIXED_SCOPE = "held_fixed"
GROUP_COLUMNS = 64  # NMS groups (image, level) laid out 64 to a row of the offset grid
PICKING_RULE = ("the feature pyramid's levels the RoI head pools (backbone.fpn; each level's map made and the maps "
                "combined), or without one the backbone's last body stage")


def is_faster_rcnn(model) -> bool:
    """True for torchvision's FasterRCNN (and its subclasses: Mask R-CNN's box branch, Keypoint R-CNN's)."""
    try:
        from torchvision.models.detection import FasterRCNN
    except ImportError:  # pragma: no cover - torchvision is installed with torch extras
        return False
    return isinstance(model, FasterRCNN)


def slot_count(model, level_anchors: list[int]) -> int:
    """P: the proposals one image can have, min(post_nms_top_n, sum over levels of min(pre_nms_top_n, anchors))."""
    pre = model.rpn.pre_nms_top_n()
    return min(model.rpn.post_nms_top_n(), sum(min(pre, count) for count in level_anchors))


def FasterRCNNOutputs(model, input_size: tuple[int, int]):  # noqa: N802 (a module factory)
    """A module: images [N, 3, H, W] (normalised) -> [N, 4 + C, P]: each proposal slot's box cx, cy, w, h and its
    class scores (see the module docstring), from a torchvision FasterRCNN in eval mode."""
    import torch
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import concat_box_prediction_layers
    from torchvision.ops import nms, roi_align
    from torchvision.ops.poolers import _filter_input, _setup_scales

    height, width = input_size
    rpn, heads = model.rpn, model.roi_heads
    pooler = heads.box_roi_pool

    class HeldFixed(torch.nn.Module):
        """Its output is its input (plus a zero: an Add node under this module's scope, which the exporter keeps, where
        it drops a clone or detach); that node becomes a gradient constant."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("zero", torch.zeros(()))

        def forward(self, x):
            return x + self.zero

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.held_fixed = HeldFixed()
            with torch.no_grad():
                zeros = torch.zeros(1, 3, height, width)
                features = model.backbone(zeros)
                anchors = rpn.anchor_generator(ImageList(zeros, [(height, width)]), list(features.values()))[0]
                objectness, _ = rpn.head(list(features.values()))
                self.level_anchors = [int(o[0].numel()) for o in objectness]
                levels = _filter_input(features, pooler.featmap_names)
                self.scales, self.mapper = _setup_scales(levels, [(height, width)], pooler.canonical_scale,
                                                         pooler.canonical_level)
            self.register_buffer("anchors", anchors.detach().clone())
            self.slots = slot_count(model, self.level_anchors)
            self.class_boxes = False  # True: forward also returns every class's decoded box (see forward)
            self.register_buffer("size", torch.tensor([width, height, width, height], dtype=torch.float32))

        def proposals(self, features, n: int):
            """[N * P, 4] proposal boxes of the slots (padding: 0) and [N * P] 1.0 where a slot holds a proposal."""
            objectness, deltas = rpn.head(list(features.values()))
            objectness, deltas = concat_box_prediction_layers(objectness, deltas)
            count = self.anchors.shape[0]
            boxes = rpn.box_coder.decode_single(deltas, self.anchors.repeat(n, 1)).reshape(n, count, 4)
            objectness = objectness.reshape(n, count)
            picked, offset = [], 0
            for level, anchors in enumerate(self.level_anchors):  # per level top-k, as rpn._get_top_n_idx
                k = min(rpn.pre_nms_top_n(), anchors)
                picked.append(objectness[:, offset : offset + anchors].topk(k, dim=1)[1] + offset)
                offset += anchors
            index = torch.cat(picked, dim=1)  # [N, K]
            level_of = torch.cat([torch.full((k.shape[1],), level, dtype=torch.int64)
                                  for level, k in enumerate(picked)])
            scores = torch.sigmoid(torch.gather(objectness, 1, index))
            boxes = torch.gather(boxes, 1, index[..., None].expand(n, index.shape[1], 4))
            boxes = torch.min(torch.clamp(boxes, min=0.0), self.size)  # clip_boxes_to_image
            sides = boxes[..., 2:] - boxes[..., :2]
            valid = (sides[..., 0] >= rpn.min_size) & (sides[..., 1] >= rpn.min_size) & (scores >= rpn.score_thresh)
            k = index.shape[1]
            image_of = torch.arange(n)[:, None].expand(n, k)
            group = image_of * len(self.level_anchors) + level_of[None, :]
            where = torch.nonzero(valid.reshape(-1))[:, 0]
            flat_boxes, flat_scores = boxes.reshape(-1, 4)[where], scores.reshape(-1)[where]
            # torchvision's batched_nms: boxes of other groups offset past each other (written out: its traced form
            # puts an If around nms), on a grid of GROUP_COLUMNS columns so the offsets stay small for float32
            group = group.reshape(-1)[where]
            offsets = torch.stack([group % GROUP_COLUMNS, group // GROUP_COLUMNS], dim=1).to(boxes.dtype)
            offsets = (offsets * (self.size[:2] + 1.0)).repeat(1, 2)
            keep = where[nms(flat_boxes + offsets, flat_scores, rpn.nms_thresh)]
            kept_image = keep // k  # kept in score order: each image's proposals are its kept in that order
            same = (kept_image[:, None] == torch.arange(n)[None, :]).to(torch.int64)
            rank = (torch.cumsum(same, dim=0) * same).sum(dim=1) - 1
            inside = torch.nonzero(rank < self.slots)[:, 0]
            slot = kept_image[inside] * self.slots + rank[inside]
            slots = torch.zeros(n * self.slots, 4).index_put((slot,), boxes.reshape(-1, 4)[keep[inside]])
            filled = torch.zeros(n * self.slots).index_put((slot,), torch.ones(slot.shape[0]))
            return slots, filled

        def pooled(self, features, boxes, n: int):
            """MultiScaleRoIAlign of [N * P] boxes: each box pooled on its own level only (the boxes of a level
            gathered, RoiAlign on them, the results written back at their rows), as torchvision's pooler does."""
            rois = torch.cat([(torch.arange(n * self.slots) // self.slots).to(boxes.dtype)[:, None], boxes], dim=1)
            levels = self.mapper([boxes])
            maps = _filter_input(features, pooler.featmap_names)
            rows, parts = [], []
            for level, (feature, scale) in enumerate(zip(maps, self.scales)):
                row = torch.nonzero(levels == level)[:, 0]
                parts.append(roi_align(feature, rois[row], output_size=pooler.output_size, spatial_scale=scale,
                                       sampling_ratio=pooler.sampling_ratio))
                rows.append(row)
            pooled = torch.cat(parts)
            result = torch.zeros((n * self.slots, *pooled.shape[1:]), dtype=pooled.dtype)
            return result.index_put((torch.cat(rows),), pooled)

        def forward(self, x):
            n = x.shape[0]
            features = self.model.backbone(x)
            boxes, filled = self.proposals(features, n)
            boxes = self.held_fixed(boxes)
            logits, regression = heads.box_predictor(heads.box_head(self.pooled(features, boxes, n)))
            probabilities = torch.softmax(logits, dim=-1)
            classes = probabilities.shape[-1]
            keep = torch.ones(classes, dtype=probabilities.dtype)
            keep[0] = 0  # the background class is no detection
            scores = probabilities * keep * filled[:, None]
            decoded = heads.box_coder.decode(regression, [boxes]).reshape(-1, classes, 4)
            refined = torch.min(torch.clamp(decoded, min=0.0), self.size)  # clip_boxes_to_image
            best = torch.argmax(probabilities[:, 1:], dim=1) + 1
            box = torch.gather(refined, 1, best[:, None, None].expand(best.shape[0], 1, 4))[:, 0]
            box = self.held_fixed(box * filled[:, None])
            centre, side = (box[:, :2] + box[:, 2:]) / 2, box[:, 2:] - box[:, :2]
            out = torch.cat([centre, side, scores], dim=1).reshape(n, self.slots, 4 + classes).transpose(1, 2)
            if self.class_boxes:  # faster_rcnn_box_score.py: every class's decoded box [N, P, C, 4], not held fixed
                return out, decoded.reshape(n, self.slots, classes, 4)
            return out

    return Outputs()


def mark_held_fixed(model) -> int:
    """Rename the ONNX nodes exported from HeldFixed modules under autodiff.HELD_FIXED; returns how many."""
    import re

    from .autodiff import HELD_FIXED

    scope = re.compile(rf"/{HELD_FIXED_SCOPE}(_\d+)?/")  # the exporter numbers a module's later calls
    marked = 0
    for node in model.graph.node:
        if scope.search(node.name) and not node.name.startswith(HELD_FIXED):
            node.name = HELD_FIXED + node.name
            marked += 1
    return marked


def default_target(model) -> str:
    """The feature pyramid (backbone.fpn: the levels the RoI head pools), else the backbone's last body stage."""
    modules = dict(model.named_modules())
    if "backbone.fpn" in modules:
        return "backbone.fpn"
    if "backbone.body.layer4" in modules:
        return "backbone.body.layer4"
    children = [name for name, _ in model.backbone.body.named_children()]
    if not children:
        raise LayerError("give target_layer (a module path; see fusioncam.list_layers(model))")
    return f"backbone.body.{children[-1]}"


def export_torch_faster_rcnn(model, target_layer: str | list[str] | None, out: str | os.PathLike,
                             input_size: tuple[int, int] = (320, 320), *, mean=None, std=None,
                             class_names: list[str] | None = None, fp16_scorer: bool = False):
    """A detection bundle from a torchvision FasterRCNN (see the module docstring): one instance per proposal slot,
    scored by the RoI head's softmax for its proposal box. `target_layer` is a module path of `model` before the RoI
    head, the feature pyramid (its levels the RoI head pools: "backbone.fpn", the default), one level
    ("backbone.fpn['0']") or a list of them; mean/std default to the model's own image_mean/image_std."""
    import torch

    from .detection_export import write_detection_bundle
    from .detection_graph import prepare_detector
    from .feature_levels import LevelsWrapper, level_selectors, resolve_levels, target_list, with_skipped_levels
    from .torch_export import _export_torchscript, _inference_copy, features_output, state_sha256

    if not is_faster_rcnn(model):
        raise ModelLoadError(f"{type(model).__name__} is not a torchvision FasterRCNN")
    targets = target_list(target_layer)
    check_bundle_destination(out)
    copy = _inference_copy(model)
    mean = tuple(copy.transform.image_mean) if mean is None else mean
    std = tuple(copy.transform.image_std) if std is None else std
    picked = targets is None
    targets = [default_target(copy)] if picked else targets
    for target in targets:
        if target.startswith(("rpn", "roi_heads", "transform")):
            raise LayerError(f"target layer '{target}' is not a feature map of the backbone: the RoI head's inputs "
                             f"are pooled per box; give a module under 'backbone'")
    source = f"{type(model).__name__} (PyTorch)"
    net = FasterRCNNOutputs(copy, tuple(input_size))
    pooled = [str(name) for name in getattr(copy.roi_heads.box_roi_pool, "featmap_names", ())]
    example = torch.zeros(2, 3, *input_size)
    selectors, skipped = level_selectors(net, "model.", targets, example,
                                         keep=lambda _path, key: not pooled or str(key) in pooled)
    unpooled = [selector.label for selector in selectors
                if isinstance(selector.key, str) and pooled and selector.key not in pooled]
    if unpooled:
        raise LayerError(f"target layer {', '.join(unpooled)}: the RoI head pools only the levels its "
                         f"roi_heads.box_roi_pool.featmap_names names ({', '.join(repr(name) for name in pooled)}); "
                         f"the others feed the RPN, whose proposals are held fixed, so no gradient reaches them")
    wrapper = LevelsWrapper(net, "model.", selectors, lambda output: output)
    with torch.no_grad():
        wrapper(example)
    try:
        exported = _export_torchscript(wrapper, example, features=len(selectors))
    except Exception as error:  # noqa: BLE001 - the exporter's own message, on one line
        raise ModelLoadError(f"PyTorch could not export {source} to ONNX: {str(error).splitlines()[0]}") from None
    inner = {features_output(index) for index in range(len(selectors))}
    kept = [output for output in exported.graph.output if output.name not in inner]
    del exported.graph.output[:]
    exported.graph.output.extend(kept)
    if mark_held_fixed(exported) != 2:
        raise ModelLoadError(f"{source}: the exported graph does not hold the proposal and output boxes fixed "
                             f"(expected 2 {HELD_FIXED_SCOPE} nodes); this torch version's exporter is not supported")
    detector = prepare_detector(exported, source, "yolov8", tuple(input_size))
    layers = resolve_levels(detector, selectors)
    result = write_detection_bundle(
        detector, layers, out, target_label=[selector.label for selector in selectors], source=source,
        source_sha256=state_sha256(model), mean=mean, std=std, class_names=class_names, picked_automatically=picked,
        fp16_scorer=fp16_scorer, picking_rule=PICKING_RULE, nms_iou_threshold=float(copy.roi_heads.nms_thresh))
    return with_skipped_levels(result, skipped)


__all__ = ["FasterRCNNOutputs", "export_torch_faster_rcnn", "is_faster_rcnn", "mark_held_fixed"]
