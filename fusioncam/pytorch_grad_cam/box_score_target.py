"""pytorch-grad-cam's FasterRCNNBoxScoreTarget on fusioncam: a CAM class given a torchvision Faster R-CNN and such
targets runs here (cam_classes.BaseCAM hands the call over).

What pytorch-grad-cam computes, per image: the model's detections (torchvision's postprocess_detections: class
scores above roi_heads.score_thresh, boxes under 1e-2 pixels dropped, NMS per class at roi_heads.nms_thresh, the
detections_per_img best; boxes scaled back to the input's size); for each reference (box, label), the detection of
largest IoU with the box (the first on ties); where that IoU is above iou_threshold and the labels agree, IoU + score
is added to the image's target; the gradient of the sum at each target layer gives the maps.

Here the model's transform (normalisation, resizing; torchvision's own code) runs on the host, the detector runs in
ONNX Runtime (export/faster_rcnn_box_score.py, exported into the cache once per weights, layer and size), the
post-processing and the matching above run on the host with torchvision's ops on the graph's class scores and
boxes, and a second run of the graph takes the matches and returns the sum and its gradient at the target layer.
Maps come from the activations and that one gradient: the methods of explain_pass_maps.py (Grad-CAM, Grad-CAM++,
XGrad-CAM, HiResCAM, Grad-CAM element-wise, LayerCAM, EigenGrad-CAM; eigen_smooth included) and Eigen-CAM (which
ignores the target, as pytorch-grad-cam's does). Score-CAM, Ablation-CAM and the other methods that score masked
images or ablated channels are refused: each masked forward's target needs the post-processing and matching again,
which are on the host, not in the scorer graph.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..graph_names import ACTIVATIONS, GRADIENTS, INPUT
from ..export.faster_rcnn_box_score import (BOX_SCALE, BOX_SCORE, CLASS_BOXES, CLASS_SCORES, MATCH_BOXES, MATCH_CLASSES,
                                            MATCH_SLOTS, MATCH_WEIGHTS)
from .explain_pass_maps import GRADIENT_PROJECTIONS, WEIGHTED_ACTIVATIONS, layer_map
from .utils.image import scale_cam_image

TARGET_NAME = "FasterRCNNBoxScoreTarget"
EIGEN_CAM = "eigencam"
TIE_TOLERANCE = 1e-2  # pixels: a (non-integer) reference coordinate this close to its detection's is a copy of it
SMALL_BOX = 1e-2  # torchvision's postprocess_detections drops boxes with a side under this (remove_small_boxes)


def is_box_score_target(target) -> bool:
    """pytorch-grad-cam's or fusioncam's FasterRCNNBoxScoreTarget (read by class name and attributes)."""
    return type(target).__name__ == TARGET_NAME and hasattr(target, "labels") and hasattr(target, "bounding_boxes")


def uses_box_score(model, targets) -> bool:
    """True where the call is for this module: a torchvision Faster R-CNN, or a FasterRCNNBoxScoreTarget given."""
    from ..export.faster_rcnn import is_faster_rcnn

    items = targets if isinstance(targets, (list, tuple)) else [targets]
    return is_faster_rcnn(model) or any(is_box_score_target(t) for t in items)


def supported_method(method: str) -> bool:
    return method in WEIGHTED_ACTIVATIONS or method in GRADIENT_PROJECTIONS or method == EIGEN_CAM


class BoxScoreGraphs:
    """The two ONNX Runtime sessions of one (Faster R-CNN weights and settings, target layer, network input size):
    the detections graph (class scores and boxes of every proposal slot) and the explain graph (the target and its
    gradient for given matches)."""

    def __init__(self, model, layer: str, size: tuple[int, int], fingerprint: str,
                 providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        from ..cpu_quota import cpu_budget

        folder = _cached_graphs(model, layer, size, fingerprint)
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_budget().cpus
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = providers or ["CPUExecutionProvider"]
        self.detections = ort.InferenceSession(str(folder / "detections.onnx"), sess_options=options,
                                               providers=providers)
        self.explain = ort.InferenceSession(str(folder / "explain.onnx"), sess_options=options, providers=providers)

    def detect(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class scores [N, P, C], clipped class boxes [N, P, C, 4] in the network input's pixels)."""
        scores, boxes = self.detections.run([CLASS_SCORES, CLASS_BOXES], {INPUT: images})
        return scores, boxes

    def explained(self, images: np.ndarray, scale: np.ndarray, matches: list[list[tuple[int, int, np.ndarray]]]
                  ) -> dict[str, np.ndarray]:
        """Activations, gradients and the target per image for its matches (slot, class, reference box)."""
        n, most = len(images), max([len(m) for m in matches] + [1])
        slots, classes = np.zeros((n, most), np.int64), np.zeros((n, most), np.int64)
        boxes, weights = np.zeros((n, most, 4), np.float32), np.zeros((n, most), np.float32)
        for i, found in enumerate(matches):
            for j, (slot, cls, box) in enumerate(found):
                slots[i, j], classes[i, j], boxes[i, j], weights[i, j] = slot, cls, box, 1.0
        names = [ACTIVATIONS, GRADIENTS, BOX_SCORE]
        feed = {INPUT: images, BOX_SCALE: scale, MATCH_SLOTS: slots, MATCH_CLASSES: classes, MATCH_BOXES: boxes,
                MATCH_WEIGHTS: weights}
        return dict(zip(names, self.explain.run(names, feed)))


def _settings(model) -> dict:
    """The model's settings that the exported graphs depend on beyond its weights (the RPN's, in eval mode)."""
    rpn = model.rpn
    return {"pre_nms_top_n": rpn._pre_nms_top_n["testing"], "post_nms_top_n": rpn._post_nms_top_n["testing"],
            "nms_thresh": rpn.nms_thresh, "score_thresh": rpn.score_thresh, "min_size": rpn.min_size,
            "class": type(model).__qualname__}


def model_fingerprint(model) -> str:
    """What the exported graphs depend on: the weights' hash and the hash of the RPN's settings (_settings)."""
    from ..export.torch_export import state_sha256

    settings = hashlib.sha256(json.dumps(_settings(model), sort_keys=True).encode()).hexdigest()
    return f"{state_sha256(model)}|{settings}"


def _cached_graphs(model, layer: str, size: tuple[int, int], fingerprint: str) -> Path:
    """The cache folder holding explain.onnx and detections.onnx, exported (atomically) if missing; `fingerprint`
    is model_fingerprint(model)."""
    from ..atomic import atomic_directory
    from ..bundle_cache import _check_cache_writable, cache_entry
    from ..export.faster_rcnn_box_score import box_score_graphs

    entry = cache_entry("FasterRCNN-box-score", fingerprint, layer, size)
    if (entry / "explain.onnx").is_file() and (entry / "detections.onnx").is_file():
        return entry
    _check_cache_writable(entry.parent)
    explain, detections = box_score_graphs(model, layer, size)
    # the entry is this cache's own folder (named by the hash above): missing, or left partial, it is replaced
    with atomic_directory(entry, guard=lambda _path: None) as staging:
        (staging / "explain.onnx").write_bytes(explain.SerializeToString())
        (staging / "detections.onnx").write_bytes(detections.SerializeToString())
    return entry


def network_inputs(model, images) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(normalised, resized images [N, 3, H', W'], box scale [N, 4] original / resized as torchvision's
    resize_boxes computes it, (H', W')): the model's own GeneralizedRCNNTransform in eval mode."""
    import copy

    import torch

    transform = copy.deepcopy(model.transform).eval()
    tensor = torch.as_tensor(images, dtype=torch.float32)
    with torch.no_grad():
        batched, _ = transform(list(tensor))
    resized = tuple(int(v) for v in batched.tensors.shape[-2:])
    if any(tuple(size) != resized for size in batched.image_sizes):
        raise InputError(f"the model's transform resizes the {tuple(tensor.shape[-2:])} images to "
                         f"{tuple(batched.image_sizes[0])} and pads them to {resized} (a multiple of "
                         f"size_divisible={transform.size_divisible}); fusioncam's Faster R-CNN graph clips boxes to "
                         f"the network input, so give images whose resized size is a multiple of "
                         f"{transform.size_divisible} (or set model.transform.min_size/max_size so it is)")
    original = tensor.shape[-2:]
    ratio_h, ratio_w = (torch.tensor(o, dtype=torch.float32) / torch.tensor(r, dtype=torch.float32)
                        for o, r in zip(original, resized))
    scale = np.tile(np.float32([ratio_w, ratio_h, ratio_w, ratio_h]), (len(tensor), 1))
    return batched.tensors.numpy().astype(np.float32), scale, resized


def postprocessed(roi_heads, scores: np.ndarray, boxes: np.ndarray, scale: np.ndarray) -> dict:
    """One image's detections as torchvision's postprocess_detections and transform.postprocess give them, from the
    graph's class scores [P, C] and clipped boxes [P, C, 4]: torch tensors boxes, labels, scores, and each
    detection's proposal slot (`slots`)."""
    import torch
    from torchvision.ops import boxes as box_ops

    classes = scores.shape[1]
    filled = scores.sum(axis=1) > 0  # padding slots score 0 for every class
    slot_ids = np.flatnonzero(filled)
    score = torch.from_numpy(np.ascontiguousarray(scores[slot_ids, 1:])).reshape(-1)
    box = torch.from_numpy(np.ascontiguousarray(boxes[slot_ids, 1:])).reshape(-1, 4)
    labels = torch.arange(1, classes).repeat(len(slot_ids))
    slots = torch.from_numpy(slot_ids).repeat_interleave(classes - 1)
    keep = torch.where(score > roi_heads.score_thresh)[0]
    box, score, labels, slots = box[keep], score[keep], labels[keep], slots[keep]
    keep = box_ops.remove_small_boxes(box, min_size=SMALL_BOX)
    box, score, labels, slots = box[keep], score[keep], labels[keep], slots[keep]
    keep = box_ops.batched_nms(box, score, labels, roi_heads.nms_thresh)[: roi_heads.detections_per_img]
    box, score, labels, slots = box[keep], score[keep], labels[keep], slots[keep]
    ratio = torch.from_numpy(np.ascontiguousarray(scale))
    return {"boxes": box * ratio, "labels": labels, "scores": score, "slots": slots}


def matched(found: dict, target) -> list[tuple[int, int, np.ndarray]]:
    """pytorch-grad-cam's FasterRCNNBoxScoreTarget rule on one image's detections: for each reference box and label,
    the detection of largest IoU (the first of equals); kept where IoU > iou_threshold and the labels agree. Returns
    (slot, class, reference box) per match; a reference coordinate that is not a whole number and lies within
    TIE_TOLERANCE of the detection's is replaced by the detection's (see below)."""
    import torch
    import torchvision

    boxes = found["boxes"]
    if len(boxes) == 0:
        return []
    labels = list(target.labels)
    references = list(target.bounding_boxes)
    if len(labels) != len(references):
        raise InputError(f"{TARGET_NAME}: {len(labels)} labels for {len(references)} bounding boxes; give one label "
                         f"per box")
    out = []
    for reference, label in zip(references, labels):
        box = torch.as_tensor(np.asarray(reference.detach().cpu() if hasattr(reference, "detach") else reference,
                                         dtype=np.float32).reshape(1, 4))
        ious = torchvision.ops.box_iou(box, boxes)
        index = int(ious.argmax())
        if float(ious[0, index]) > float(getattr(target, "iou_threshold", 0.5)) \
                and int(found["labels"][index]) == int(label):
            detection = boxes[index].numpy()
            reference = box[0].numpy()
            # a reference copied from torchvision's detections is that detection's box in torch, but ONNX Runtime's
            # decoding puts the graph's box up to ~5e-3 pixels away, on either side of IoU's kink: such coordinates
            # are taken as equal, where the gradient splits as torch's does at a tie. Whole numbers are not copies
            # (references rounded as pytorch-grad-cam's tutorial rounds them: torch's side of the kink is kept)
            copied = (np.abs(reference - detection) <= TIE_TOLERANCE) & (reference != np.round(reference))
            out.append((int(found["slots"][index]), int(found["labels"][index]),
                        np.where(copied, detection, reference)))
    return out


class BoxScoreCAM:
    """One CAM object's Faster R-CNN state: the graphs per (layer, network input size)."""

    def __init__(self) -> None:
        self._graphs: dict[tuple, BoxScoreGraphs] = {}

    def graphs(self, cam, layer: str, size: tuple[int, int], fingerprint: str) -> BoxScoreGraphs:
        """The graphs of `layer` at `size` for the model whose model_fingerprint is `fingerprint` (opened once)."""
        key = (layer, size, fingerprint)
        if key not in self._graphs:
            self._graphs[key] = BoxScoreGraphs(cam.model, layer, size, fingerprint, _providers(cam.device))
        return self._graphs[key]

    def maps(self, cam, images: np.ndarray, targets: list, eigen_smooth: bool) -> np.ndarray:
        """float32 [N, H, W]: the method's map per image for its target, aggregated over the target layers as
        pytorch-grad-cam does; sets cam.outputs to the detections (torchvision's output dicts plus `slots`) and
        cam.box_scores to each image's target value (float32 [N], the sum of IoU + score over its matches)."""
        inputs, scale, size = network_inputs(cam.model, images)
        height, width = images.shape[2:]
        layers = []
        found = None
        fingerprint = model_fingerprint(cam.model)  # the weights hashed once per call, not once per layer
        for path in cam.layer_paths:
            graphs = self.graphs(cam, path, size, fingerprint)
            if found is None:
                scores, boxes = graphs.detect(inputs)
                found = [postprocessed(cam.model.roi_heads, scores[i], boxes[i], scale[i])
                         for i in range(len(inputs))]
                matches = [matched(found[i], targets[i]) for i in range(len(inputs))]
            outputs = graphs.explained(inputs, scale, matches)
            if cam.method == EIGEN_CAM:
                from ..kernels.pytorch_grad_cam_math import lapack_centered_projection

                low = np.asarray(lapack_centered_projection(outputs[ACTIVATIONS]), dtype=np.float32)
            else:
                low = layer_map(cam.method, outputs, eigen_smooth)
            layers.append(scale_cam_image(np.maximum(low, 0), (int(width), int(height))))
        cam.outputs = found
        cam.box_scores = outputs[BOX_SCORE]
        return scale_cam_image(np.mean(np.maximum(np.stack(layers, axis=1), 0), axis=1))


def checked_targets(cam, targets, n: int) -> list:
    """One FasterRCNNBoxScoreTarget per image (one for a single image), or an InputError saying what is needed."""
    from ..export.faster_rcnn import is_faster_rcnn

    name = type(cam).__name__
    items = targets if isinstance(targets, (list, tuple)) else [targets]
    if not is_faster_rcnn(cam.model):
        raise InputError(f"{name}: {TARGET_NAME} is for a torchvision FasterRCNN (its detections' boxes, labels and "
                         f"scores); this model is {type(cam.model).__name__}")
    if targets is None or not items or not all(is_box_score_target(t) for t in items):
        raise InputError(f"{name} on a torchvision Faster R-CNN takes targets=[{TARGET_NAME}(labels=..., "
                         f"bounding_boxes=...)] (one per image); got {targets!r}. Class targets do not apply to a "
                         f"detector's outputs")
    if len(items) != n:
        raise InputError(f"{name}: {len(items)} {TARGET_NAME} targets for {n} images; give one per image (its "
                         f"reference boxes are in that image's pixels)")
    if not supported_method(cam.method):
        from .cam_classes import CLASS_METHODS

        usable = ", ".join(k for k, v in CLASS_METHODS.items() if supported_method(v.method))
        raise InputError(f"{name} is not available with {TARGET_NAME}: fusioncam computes this target and its "
                         f"gradient in one explain pass, so the methods whose maps come from the activations and "
                         f"that gradient take it ({usable}); {name} scores masked images, ablated channels or more "
                         f"than one gradient, and each such forward would need torchvision's post-processing and "
                         f"the matching again, which run on the host")
    if cam.reshape_transform is not None:
        raise InputError(f"{name}: reshape_transform is not supported with {TARGET_NAME} (fasterrcnn_reshape_transform "
                         f"reads the backbone's dict of FPN levels, a target pytorch-grad-cam's own GradCAM gets no "
                         f"gradient for); give one feature map module, e.g. model.backbone.fpn.layer_blocks[0], and "
                         f"reshape_transform=None")
    return list(items)


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise InputError("device='cuda' but ONNX Runtime has no CUDAExecutionProvider here; use device='cpu'")
    return ["CPUExecutionProvider"]
