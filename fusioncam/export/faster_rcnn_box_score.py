"""The graphs of pytorch-grad-cam's FasterRCNNBoxScoreTarget on a torchvision Faster R-CNN: per image, the sum over
matched reference boxes of IoU(the matched detection's box, the reference) + the detection's score, differentiated
in-graph with respect to a target layer.

torchvision computes a detection of class c from proposal slot p as: score = softmax(box_predictor(box_head(
MultiScaleRoIAlign(features, proposal))))[c]; box = the class-c box regression decoded on the proposal, clipped to the
image (`clip_boxes_to_image`: a clamp of x to [0, W] and y to [0, H]) and, where the model's transform resized the
image, scaled back by original / resized size. Its RPN detaches the proposals, so the gradient of
IoU + score runs through the class-c box regression (decode, clip, scale, IoU) and the softmax, both back to the
features pooled for the proposal; the proposals themselves are constants (export/faster_rcnn.py's HeldFixed).

`box_score_graphs` exports FasterRCNNOutputs (its `class_boxes` output: every class's decoded box) and appends:

- every slot's class scores [N, P, C] (background 0, padding slots 0) and clipped class boxes [N, P, C, 4] in the
  resized image (CLASS_SCORES, CLASS_BOXES: what the host's post-processing reads, scaling them back itself);
- per image M matches (MATCH_SLOTS, MATCH_CLASSES, MATCH_BOXES the reference boxes, MATCH_WEIGHTS 1 or 0 for
  padding): the target BOX_SCORE [N] = sum over matches of IoU(box[slot, class], reference) + score[slot, class],
  IoU as torchvision's box_iou (elementwise max and min written (a + b +- |a - b|) / 2, which gives torch.maximum's
  and torch.minimum's gradient, half to each side at a tie; no clamp of the areas), and its gradient at the target
  layer from one backward pass (the gradient of the sum, as pytorch-grad-cam's loss.backward() gives it).

The matching itself (torchvision's postprocess_detections, then pytorch-grad-cam's best-IoU rule) runs on the host:
fusioncam/pytorch_grad_cam/box_score_target.py.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import LayerError, ModelLoadError
from ..graph_names import ACTIVATIONS, GRADIENTS, INPUT

MATCH_SLOTS = "match_slots"  # int64 [N, M]: the matched detection's proposal slot
MATCH_CLASSES = "match_classes"  # int64 [N, M]: its class (torchvision label)
MATCH_BOXES = "match_boxes"  # float [N, M, 4]: the reference box, x0, y0, x1, y1 in the original image's pixels
MATCH_WEIGHTS = "match_weights"  # float [N, M]: 1 for a match, 0 for padding
BOX_SCALE = "box_scale"  # float [N, 4]: original / resized size per coordinate (1 where the transform kept the size)
CLASS_SCORES = "class_scores"  # float [N, P, C]
CLASS_BOXES = "class_boxes"  # float [N, P, C, 4]: clipped, in the resized image (postprocess_detections' boxes)
BOX_SCORE = "box_score"  # float [N]: the target per image
HELD_FIXED_NODES = 2  # the proposals and the bundle output's best-class box (export/faster_rcnn.py)


def _torch_detector(model, target_layer: str, input_size: tuple[int, int]):
    """The wrapper module: images -> (scores and clipped class boxes [N, P, 5C], target layer output)."""
    import torch

    from .faster_rcnn import FasterRCNNOutputs
    from .torch_export import features_wrapper

    height, width = input_size
    net = FasterRCNNOutputs(model, tuple(input_size))
    net.class_boxes = True

    def head(outputs):
        out, decoded = outputs
        scores = out[:, 4:, :].transpose(1, 2)  # [N, P, C]
        # torchvision's clip_boxes_to_image in eager mode: x clamped to [0, W], y to [0, H]
        sides = [decoded[..., i : i + 1].clamp(min=0.0, max=float(width if i % 2 == 0 else height)) for i in range(4)]
        boxes = torch.cat(sides, dim=-1)
        return torch.cat([scores, boxes.flatten(2)], dim=2)

    def features(feats, _head):
        if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
            raise LayerError(f"target layer '{target_layer}' does not output a 4-D feature map [N, K, h, w] (a "
                             f"module returning a dict, such as the backbone with its FPN levels, is not a target "
                             f"here: pick one level's module, e.g. backbone.fpn.layer_blocks.0)")
        return feats

    return features_wrapper(net, f"model.{target_layer}", head, features)


def box_score_graphs(model, target_layer: str, input_size: tuple[int, int]) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(explain graph, detections graph) of a torchvision FasterRCNN at `input_size` (the size the model's
    transform gives the images) for the module path `target_layer` (under `backbone`); see the module docstring."""
    import torch

    from .autodiff import differentiate
    from .explain_graph import TARGET_GRADIENT
    from .faster_rcnn import HELD_FIXED_SCOPE, is_faster_rcnn, mark_held_fixed
    from .torch_export import FEATURES_OUTPUT, _export_torchscript, _inference_copy
    from ..graph_names import LOGITS

    if not is_faster_rcnn(model):
        raise ModelLoadError(f"{type(model).__name__} is not a torchvision FasterRCNN")
    if not target_layer.startswith("backbone"):
        raise LayerError(f"target layer '{target_layer}' is not a feature map of the backbone (the RoI head's "
                         f"inputs are pooled per box): give a module under 'backbone'")
    copy = _inference_copy(model)
    wrapper = _torch_detector(copy, target_layer, tuple(input_size))
    example = torch.zeros(2, 3, *input_size)
    with torch.no_grad():
        head, feats = wrapper(example)
    classes = int(head.shape[2]) // 5
    slots = int(head.shape[1])
    k, h, w = (int(v) for v in feats.shape[1:])
    try:
        exported = _export_torchscript(wrapper, example)
    except Exception as error:  # noqa: BLE001 - the exporter's own message, on one line
        raise ModelLoadError(f"PyTorch could not export {type(model).__name__} to ONNX: "
                             f"{str(error).splitlines()[0]}") from None
    if mark_held_fixed(exported) != HELD_FIXED_NODES:
        raise ModelLoadError(f"{type(model).__name__}: the exported graph does not hold the proposal boxes fixed "
                             f"(expected {HELD_FIXED_NODES} {HELD_FIXED_SCOPE} nodes); this torch version's exporter "
                             f"is not supported")
    from .detection_graph import _Nodes

    graph = exported.graph
    del graph.output[:]
    batch, matches = "N", "M"
    graph.input.extend([helper.make_tensor_value_info(BOX_SCALE, TensorProto.FLOAT, [batch, 4]),
                        helper.make_tensor_value_info(MATCH_SLOTS, TensorProto.INT64, [batch, matches]),
                        helper.make_tensor_value_info(MATCH_CLASSES, TensorProto.INT64, [batch, matches]),
                        helper.make_tensor_value_info(MATCH_BOXES, TensorProto.FLOAT, [batch, matches, 4]),
                        helper.make_tensor_value_info(MATCH_WEIGHTS, TensorProto.FLOAT, [batch, matches])])
    nodes = _Nodes(exported)
    const = nodes.const
    scores = nodes.slice(LOGITS, 0, classes, 2, "scores")
    flat = nodes.slice(LOGITS, classes, 5 * classes, 2, "boxes_flat")
    clipped = nodes.add("Reshape", [flat, const("class_boxes_shape", np.array([0, 0, classes, 4], np.int64))],
                        "clipped_boxes")
    scale = nodes.add("Reshape", [BOX_SCALE, const("scale_shape", np.array([-1, 1, 1, 4], np.int64))], "scale_4d")
    boxes = nodes.add("Mul", [clipped, scale], "boxes")  # torchvision's transform.postprocess (resize_boxes)

    # each match's (slot, class) as one index into the flattened [P * C] axis; GatherElements' gradient scatter-adds
    # (a detection matched by two references counts twice, as in pytorch-grad-cam's sum)
    index = nodes.add("Add", [nodes.add("Mul", [MATCH_SLOTS, const("classes", np.array(classes, np.int64))],
                                        "slot_offset"), MATCH_CLASSES], "match_index")  # [N, M]
    flat_scores = nodes.add("Reshape", [scores, const("flat_scores_shape", np.array([0, -1], np.int64))],
                            "flat_scores")  # [N, P * C]
    picked_score = nodes.add("GatherElements", [flat_scores, index], "matched_score", axis=1)  # [N, M]
    flat_boxes = nodes.add("Reshape", [boxes, const("flat_boxes_shape", np.array([0, -1, 4], np.int64))],
                           "flat_boxes")  # [N, P * C, 4]
    index_3d = nodes.add("Add", [nodes.add("Unsqueeze", [index, const("axis2", np.array([2], np.int64))],
                                           "match_index_column"), const("four_zeros", np.zeros((1, 1, 4), np.int64))],
                         "match_index_3d")  # [N, M, 4]
    picked_box = nodes.add("GatherElements", [flat_boxes, index_3d], "matched_box", axis=1)  # [N, M, 4]
    half = const("half", np.array(0.5, np.float32))

    def extreme(a: str, b: str, sign: str, name: str) -> str:
        """torch.maximum (sign Add) or torch.minimum (sign Sub) as (a + b +- |a - b|) / 2: half the gradient to each
        side at a tie, as torch gives."""
        spread = nodes.add("Abs", [nodes.add("Sub", [a, b], f"{name}_diff")], f"{name}_spread")
        return nodes.add("Mul", [nodes.add(sign, [nodes.add("Add", [a, b], f"{name}_sum"), spread], f"{name}_twice"),
                                 half], name)

    box_low, ref_low = nodes.slice(picked_box, 0, 2, 2, "box_low"), nodes.slice(MATCH_BOXES, 0, 2, 2, "ref_low")
    box_high, ref_high = nodes.slice(picked_box, 2, 4, 2, "box_high"), nodes.slice(MATCH_BOXES, 2, 4, 2, "ref_high")
    low = extreme(box_low, ref_low, "Add", "inter_low")
    high = extreme(box_high, ref_high, "Sub", "inter_high")

    def product(pair: str, name: str) -> str:
        return nodes.add("Mul", [nodes.slice(pair, 0, 1, 2, f"{name}_x"), nodes.slice(pair, 1, 2, 2, f"{name}_y")],
                         name)  # [N, M, 1]

    inter = product(nodes.add("Relu", [nodes.add("Sub", [high, low], "inter_sides_raw")], "inter_sides"), "inter")
    box_area = product(nodes.add("Sub", [box_high, box_low], "box_sides"), "box_area")
    ref_area = product(nodes.add("Sub", [ref_high, ref_low], "ref_sides"), "ref_area")
    weights = nodes.add("Unsqueeze", [MATCH_WEIGHTS, const("axis2", np.array([2], np.int64))], "weights_3d")
    padding = nodes.add("Sub", [const("one", np.array(1.0, np.float32)), weights], "padding")  # union 1 there, not 0
    union = nodes.add("Add", [nodes.add("Sub", [nodes.add("Add", [box_area, ref_area], "area_sum"), inter],
                                        "union_raw"), padding], "union")
    iou = nodes.reduce("ReduceSum", nodes.add("Div", [inter, union], "iou_3d"), [2], "iou")  # [N, M]
    per_match = nodes.add("Mul", [nodes.add("Add", [iou, picked_score], "iou_plus_score"), MATCH_WEIGHTS],
                          "per_match")
    total = nodes.reduce("ReduceSum", per_match, [1], "total")  # [N]
    graph.node.extend(helper.make_node("Identity", [source], [name], name=f"out/{name}")
                      for source, name in ((scores, CLASS_SCORES), (clipped, CLASS_BOXES), (total, BOX_SCORE)))
    ones = nodes.add("ConstantOfShape", [nodes.add("Shape", [total], "box_score_shape")], "seed",
                     value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    float_ = TensorProto.FLOAT
    detections = onnx.ModelProto()
    detections.CopyFrom(exported)
    _outputs(detections, [(CLASS_SCORES, float_, [batch, slots, classes]),
                          (CLASS_BOXES, float_, [batch, slots, classes, 4])])
    explain = differentiate(exported, wrt=FEATURES_OUTPUT, of=total, seed=ones, grad_name=TARGET_GRADIENT)
    explain.graph.node.extend([helper.make_node("Identity", [FEATURES_OUTPUT], [ACTIVATIONS], name="out/activations"),
                               helper.make_node("Identity", [TARGET_GRADIENT], [GRADIENTS], name="out/gradients")])
    _outputs(explain, [(ACTIVATIONS, float_, [batch, k, h, w]), (GRADIENTS, float_, [batch, k, h, w]),
                       (CLASS_SCORES, float_, [batch, slots, classes]),
                       (CLASS_BOXES, float_, [batch, slots, classes, 4]), (BOX_SCORE, float_, [batch])])
    if INPUT not in {value.name for value in explain.graph.input}:  # pragma: no cover - the exporter names it
        raise ModelLoadError("the exported detector has no 'input'")
    return explain, detections


def _outputs(model: onnx.ModelProto, outputs: list[tuple[str, int, list]]) -> None:
    """Set the graph outputs and drop what they do not need."""
    from .graph_surgery import prune_to_outputs

    del model.graph.output[:]
    model.graph.output.extend(helper.make_tensor_value_info(name, elem, shape) for name, elem, shape in outputs)
    prune_to_outputs(model, [name for name, _, _ in outputs])


__all__ = ["BOX_SCALE", "BOX_SCORE", "CLASS_BOXES", "CLASS_SCORES", "MATCH_BOXES", "MATCH_CLASSES", "MATCH_SLOTS",
           "MATCH_WEIGHTS", "box_score_graphs"]
