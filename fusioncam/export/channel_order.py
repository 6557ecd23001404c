"""Models that take BGR images (`--bgr`): the channel flip written into the graph, so the bundle takes RGB.

fusioncam reads every image as RGB and normalises it with the bundle's mean/std (tasks, serve, explain-dataset all
do the same), so a model that takes its channels in B, G, R order gets a `Gather` on the channel axis in front of its
first node: the bundle's input is RGB, the model still sees BGR. The mean/std a user gives for such a model are in
its own channel order (B, G, R); the bundle stores them in R, G, B order, the order of the images it takes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ModelLoadError

RGB_SUFFIX = "_rgb"  # the new graph input: the original input's name + this


def reverse_input_channels(model: onnx.ModelProto, origin: str) -> onnx.ModelProto:
    """A copy of `model` whose image input (its first graph input that is not an initializer) takes the channels in
    the opposite order: Gather(indices [2, 1, 0], axis 1) from a new input feeds the original one."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if not inputs:
        raise ModelLoadError(f"{origin}: the model has no image input to reverse the channels of (--bgr)")
    image = inputs[0]
    dims = image.type.tensor_type.shape.dim
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        raise ModelLoadError(f"{origin}: --bgr reverses the 3 channels of an [N, 3, H, W] image input; input "
                             f"'{image.name}' has shape {shape}")
    original = image.name
    renamed = original + RGB_SUFFIX
    taken = {value.name for value in graph.input} | {o for node in graph.node for o in node.output}
    if renamed in taken:
        raise ModelLoadError(f"{origin}: a tensor named '{renamed}' exists already; rename it before --bgr")
    indices = numpy_helper.from_array(np.array([2, 1, 0], np.int64), original + "_bgr_order")
    image.name = renamed
    graph.initializer.append(indices)
    graph.node.insert(0, helper.make_node("Gather", [renamed, indices.name], [original], axis=1,
                                          name="fusioncam/rgb_to_bgr"))
    return out


def bundle_statistics(mean, std, given_mean: bool, given_std: bool) -> tuple[tuple, tuple]:
    """The bundle's (mean, std), R, G, B, for a BGR model: what the user gave (in the model's order B, G, R)
    reversed; a default (already per colour, R, G, B) kept."""
    return (tuple(mean)[::-1] if given_mean else tuple(mean)), (tuple(std)[::-1] if given_std else tuple(std))


BGR_NOTE = ("the model takes BGR: the bundle's graphs reverse the channels of its RGB input (mean/std stored in "
            "R, G, B order)")


def with_bgr_note(result):
    """The ExportResult with BGR_NOTE among its notes."""
    from dataclasses import replace

    return replace(result, notes=(*result.notes, BGR_NOTE))


__all__ = ["BGR_NOTE", "bundle_statistics", "reverse_input_channels", "with_bgr_note"]
