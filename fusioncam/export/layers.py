"""Candidate target layers of an ONNX classifier: listing, automatic choice and name resolution."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ..errors import LayerError
from .attention_operands import AttentionOperands
from .classifier_graph import BATCH_DIM, SOFTMAX_OPS, Classifier, tensor_elem_types, tensor_shapes
from .target_layout import NCHW, TOKENS, LayoutRequest, TargetLayout, detect_layout

MAX_REACH_TRIES = 24  # candidate maps tried from the head backwards by the automatic choice


@dataclass(frozen=True)
class Layer:
    """A float tensor the logits depend on that makes a [N,K,h,w] map: a possible CAM target.

    `shape` is the map's (N, K, h, w); `source_shape` the tensor's own shape and `layout` how one becomes the other
    (channels-first as it is, channels-last transposed, or tokens with their prefix dropped)."""

    name: str
    shape: tuple  # (N, K, h, w) with N symbolic
    op_type: str  # the op that produces it
    layout: TargetLayout = TargetLayout()
    source_shape: tuple | None = None  # the tensor's shape when it is not [N,K,h,w] itself
    role: str = ""  # for list_layers: "automatic target", "last block of a stage", "final norm"

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def spatial(self) -> tuple[int, int]:
        return self.shape[2], self.shape[3]

    @property
    def note(self) -> str:
        """What a user should know before picking it: a 1x1 map (constant CAM) or a rearranged layout."""
        if self.spatial == (1, 1):
            return "1x1 map: its CAM is constant, not a useful target"
        notes = [self.role, "" if self.layout.kind == NCHW else self.layout.describe()]
        return "; ".join(note for note in notes if note)


SHAPE_READERS = ("Shape", "Size")  # ops whose output depends on their input's shape, never on its values


def logits_ancestors(model: onnx.ModelProto, logits: str, values_only: bool = False) -> set[str]:
    """Every tensor the logits depend on, through any edge; with `values_only`, not through the input of a Shape or
    Size node, so a tensor whose only way to the logits is its shape (a QOperator graph's DequantizeLinear output
    that only a Shape reads, for a Resize's target size) is left out: its values never change the logits."""
    made_by = {out: node for node in model.graph.node for out in node.output if out}
    seen: set[str] = set()
    stack = [logits]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        node = made_by.get(name)
        if node is not None and not (values_only and node.op_type in SHAPE_READERS):
            stack.extend(i for i in node.input if i)
    return seen


def _layer_of(name: str, shape, op_type: str, input_size: tuple[int, int],
              request: LayoutRequest = LayoutRequest()) -> Layer | None:
    """The Layer a tensor makes (its layout detected or as requested), None when it makes no map."""
    if shape is None or len(shape) not in (3, 4) or isinstance(shape[0], int):
        return None  # the batch dim must be the symbolic N: [N*windows, ...] tensors are not per-image maps
    layout = detect_layout(shape, input_size, request, name=f"tensor '{name}'")
    if layout is None:
        return None
    source = None if layout.kind == NCHW else tuple(shape)
    return Layer(name=name, shape=(BATCH_DIM, *layout.map_shape(shape)[1:]), op_type=op_type, layout=layout,
                 source_shape=source)


def candidate_layers(classifier: Classifier) -> list[Layer]:
    """Float node outputs whose values reach the logits that make a map (channels-first, channels-last or tokens
    with static sizes), in graph order; attention probabilities (Softmax outputs) and tensors that reach the logits
    only through their shape are never candidates."""
    model = classifier.model
    shapes = tensor_shapes(model)
    types = tensor_elem_types(model)
    ancestors = logits_ancestors(model, classifier.logits_name, values_only=True)
    layers = []
    for node in model.graph.node:
        if node.op_type in SOFTMAX_OPS:
            continue
        for out in node.output:
            if out in ancestors and types.get(out) == TensorProto.FLOAT:
                layer = _layer_of(out, shapes.get(out), node.op_type, classifier.input_size)
                if layer is not None:
                    layers.append(layer)
    return layers


def automatic_candidates(layers: list[Layer], input_size: tuple[int, int]) -> list[Layer]:
    """The layers an automatic choice may take: spatial size > 1; a channels-first map shaped like the input (aspect
    within a factor 1.5); and in a model with token maps, no 4-D tensor with a side equal to a token count: those
    are attention scores [N, heads, T, T] and per-head queries, keys and values [N, heads, T, d] / [N, T, heads, d]."""
    token_counts = {layer.source_shape[1] for layer in layers if layer.layout.kind == TOKENS}
    aspect = input_size[0] / input_size[1]

    def plausible(layer: Layer) -> bool:
        if min(layer.spatial) <= 1:
            return False
        if layer.layout.kind != NCHW:
            return True
        h, w = layer.spatial
        return 1 / 1.5 <= (h / w) / aspect <= 1.5 and not token_counts & {layer.channels, h, w}

    return [layer for layer in layers if plausible(layer)]


def residual_sums(classifier: Classifier) -> set[str]:
    """Outputs of Add nodes that add two computed tensors (a residual connection), not a constant (a bias)."""
    constants = {init.name for init in classifier.model.graph.initializer}
    constants |= {node.output[0] for node in classifier.model.graph.node if node.op_type == "Constant"}
    return {node.output[0] for node in classifier.model.graph.node
            if node.op_type == "Add" and not any(name in constants for name in node.input)}


def auto_target(classifier: Classifier, reaches=None) -> Layer:
    """The last map with spatial size > 1 (in both height and width) that feeds the classifier head.

    Both dims must exceed 1 so that channels-last views inside a head (e.g. ConvNeXt's LayerNorm2d permute of a
    pooled [N,C,1,1] map to [N,1,1,C]) are not mistaken for feature maps. Token maps count only when a
    LayerNormalization or a residual Add makes them (a transformer block's representations, not its q/k/v
    projections or bias additions); any other map that reaches the logits only as a query, key or value of an
    attention (CvT's convolutional key/value projections, LeViT's subsampled queries; see attention_operands) is
    left out too. `reaches(layer)` (see map_reach) says whether the map's positions reach the
    logits: a ViT head reads only the class token, so the last blocks' patch tokens get zero gradient and the choice
    moves back to the last block's first norm."""
    residual = residual_sums(classifier)
    operands = AttentionOperands(classifier.model, classifier.logits_name)

    def representation(layer: Layer) -> bool:
        if layer.op_type == "LayerNormalization" or layer.name in residual:
            return True  # a block's representation, even when only q/k/v read it (ViT's norm1)
        return layer.layout.kind != TOKENS and not operands.only_attention(layer.name)

    spatial = [layer for layer in automatic_candidates(candidate_layers(classifier), classifier.input_size)
               if representation(layer)]
    if not spatial:
        raise LayerError(
            "no feature map (4-D, or tokens on a grid) with spatial size > 1 feeds the logits; pass a target layer "
            "explicitly (see `fusioncam layers MODEL`)"
        )
    for layer in reversed(spatial[-MAX_REACH_TRIES:] if reaches is not None else spatial[-1:]):
        if reaches is None or reaches(layer):
            return layer
    raise LayerError(
        f"none of the last {min(len(spatial), MAX_REACH_TRIES)} candidate maps has positions whose change reaches the "
        f"logits (the head reads only some tokens); pass a target layer explicitly (see `fusioncam layers MODEL`)"
    )


def resolve_target(classifier: Classifier, name: str, request: LayoutRequest = LayoutRequest()) -> Layer:
    """The layer called `name`, or a LayerError listing the closest names and why the name is unusable."""
    model = classifier.model
    shapes = tensor_shapes(model)
    all_tensors = {out for node in model.graph.node for out in node.output if out}
    if name not in all_tensors:
        names = [layer.name for layer in candidate_layers(classifier)]
        close = difflib.get_close_matches(name, names or list(all_tensors), n=5, cutoff=0.3)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        raise LayerError(f"unknown target layer '{name}': no tensor of that name in the graph.{hint} "
                         f"List them with `fusioncam layers MODEL`.")
    if name not in logits_ancestors(model, classifier.logits_name):
        raise LayerError(f"target layer '{name}' does not reach the logits ('{classifier.logits_name}'): "
                         f"its gradient would be zero. Pick a layer on the way to the classifier head.")
    made_by = {out: node for node in model.graph.node for out in node.output if out}
    shape = shapes.get(name)
    layer = None
    if tensor_elem_types(model).get(name) == TensorProto.FLOAT:
        layer = _layer_of(name, shape, made_by[name].op_type, classifier.input_size, request)
    if layer is None:
        raise LayerError(
            f"target layer '{name}' has shape {shape}; a CAM target must be a float 4-D feature map with static "
            f"sizes: [N,K,h,w], channels-last [N,h,w,C] (channels_last=True) or tokens [N,T,C] on a grid "
            f"(token_grid=(h, w), prefix_tokens=k). Pick one from `fusioncam layers MODEL`."
        )
    if layer.spatial == (1, 1):
        raise LayerError(
            f"target layer '{name}' is a 1x1 map (K={layer.channels}): every CAM method gives a constant map there. "
            f"Pick a layer before the global pooling (see `fusioncam layers MODEL`)."
        )
    return layer
