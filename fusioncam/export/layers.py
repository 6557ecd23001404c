"""Candidate target layers of an ONNX classifier: listing, automatic choice and name resolution."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ..errors import LayerError
from .classifier_graph import Classifier, tensor_elem_types, tensor_shapes


@dataclass(frozen=True)
class Layer:
    """A 4-D float tensor the logits depend on: a possible CAM target."""

    name: str
    shape: tuple  # (N, K, h, w) with N symbolic
    op_type: str  # the op that produces it

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def spatial(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]


def logits_ancestors(model: onnx.ModelProto, logits: str) -> set[str]:
    """Every tensor the logits depend on, through any edge."""
    made_by = {out: node for node in model.graph.node for out in node.output if out}
    seen: set[str] = set()
    stack = [logits]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = made_by.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return seen


def candidate_layers(classifier: Classifier) -> list[Layer]:
    """Static-shaped 4-D float node outputs on the way to the logits, in graph order."""
    model = classifier.model
    shapes = tensor_shapes(model)
    types = tensor_elem_types(model)
    ancestors = logits_ancestors(model, classifier.logits_name)
    layers = []
    for node in model.graph.node:
        for out in node.output:
            shape = shapes.get(out)
            if (
                out in ancestors
                and types.get(out) == TensorProto.FLOAT
                and shape is not None
                and len(shape) == 4
                and all(isinstance(d, int) for d in shape[1:])
            ):
                layers.append(Layer(name=out, shape=shape, op_type=node.op_type))
    return layers


def auto_target(classifier: Classifier) -> Layer:
    """The last 4-D feature map with spatial size > 1 (in both height and width) that feeds the classifier head.

    Both dims must exceed 1 so that channels-last views inside a head (e.g. ConvNeXt's LayerNorm2d permute of a
    pooled [N,C,1,1] map to [N,1,1,C]) are not mistaken for feature maps."""
    spatial = [layer for layer in candidate_layers(classifier) if min(layer.spatial) > 1]
    if not spatial:
        raise LayerError(
            "no 4-D feature map with spatial size > 1 feeds the logits; pass a target layer explicitly "
            "(see `fusioncam layers MODEL`)"
        )
    return spatial[-1]


def resolve_target(classifier: Classifier, name: str) -> Layer:
    """The layer called `name`, or a LayerError listing the closest names and why the name is unusable."""
    model = classifier.model
    layers = {layer.name: layer for layer in candidate_layers(classifier)}
    if name in layers:
        return layers[name]
    all_tensors = {out for node in model.graph.node for out in node.output if out}
    if name not in all_tensors:
        close = difflib.get_close_matches(name, list(layers) or list(all_tensors), n=5, cutoff=0.3)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        raise LayerError(f"unknown target layer '{name}': no tensor of that name in the graph.{hint} "
                         f"List them with `fusioncam layers MODEL`.")
    if name not in logits_ancestors(model, classifier.logits_name):
        raise LayerError(f"target layer '{name}' does not reach the logits ('{classifier.logits_name}'): "
                         f"its gradient would be zero. Pick a layer on the way to the classifier head.")
    shape = tensor_shapes(model).get(name)
    raise LayerError(
        f"target layer '{name}' has shape {shape}; a CAM target must be a 4-D float feature map [N,K,h,w] "
        f"with static K, h, w. Pick one from `fusioncam layers MODEL`."
    )
