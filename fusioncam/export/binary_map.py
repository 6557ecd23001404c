"""One-channel segmentation outputs (a binary map, e.g. DBNet's text probability) read as two-class scores.

A softmax over a single class is 1 everywhere, so a `[N, 1, H', W']` output cannot be scored as class scores: its
predicted region would be every pixel and its region probability a constant. A one-channel map is a binary map
whose per-pixel probability is `sigmoid(y)`: when the graph ends in a Sigmoid, `y` is the Sigmoid's input (the
logit), otherwise the output itself is taken as the logit. It becomes the two-class scores `[0, y]`
(class 0 = background, class 1 = foreground), whose softmax is exactly `[1 - sigmoid(y), sigmoid(y)]`; the arg-max
is the foreground where `sigmoid(y) > 0.5`. The region score of class 1 is `S = sum_ij w_ij y(i, j)`, the shipped
logit summed over the region; class 0's score is the constant 0, so its gradients are zero (gradient methods give
flat maps for the background; the score-based methods still score `1 - sigmoid(y)`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .classifier_graph import producers, tensor_shapes

BINARY_CLASS_NAMES = ["background", "foreground"]
BINARY_NOTE = ("one-channel output read as a binary map: class scores [0, y] (background, foreground), y the logit "
               "{source}; their softmax is [1 - sigmoid(y), sigmoid(y)]")


def two_class_scores(model: onnx.ModelProto, scores: str) -> tuple[str, str]:
    """Append `[0, y]` for the one-channel output `scores` (its Sigmoid's input when a Sigmoid makes it);
    return (the new [N, 2, H', W'] scores tensor, a note for the manifest)."""
    made_by = producers(model)
    logit = scores
    source = f"'{scores}' (taken as a logit: no Sigmoid makes it)"
    if scores in made_by and made_by[scores].op_type == "Sigmoid":
        logit = made_by[scores].input[0]
        source = f"'{logit}' (the input of the final Sigmoid '{made_by[scores].name or scores}')"
    shape = tensor_shapes(model)[scores]
    zero, background, two_class = (f"binary_map/{name}" for name in ("zero", "background", "scores"))
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), zero))
    model.graph.node.extend([
        helper.make_node("Mul", [logit, zero], [background], name="binary_map/background"),
        helper.make_node("Concat", [background, logit], [two_class], name="binary_map/concat", axis=1),
    ])
    dims = [shape[0], 2, *shape[2:]]
    model.graph.value_info.extend([helper.make_tensor_value_info(background, TensorProto.FLOAT, [shape[0], *shape[1:]]),
                                   helper.make_tensor_value_info(two_class, TensorProto.FLOAT, dims)])
    if logit != scores and logit not in tensor_shapes(model):
        model.graph.value_info.append(helper.make_tensor_value_info(logit, TensorProto.FLOAT, list(shape)))
    return two_class, BINARY_NOTE.format(source=source)


__all__ = ["BINARY_CLASS_NAMES", "two_class_scores"]
