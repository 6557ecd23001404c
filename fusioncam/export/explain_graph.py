"""Build the bundle's two graphs from a classifier: the explain graph (logits, A, dy_c/dA) and the scorer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph_names import ACTIVATIONS, GRADIENTS, INPUT, LOGITS, TARGET, TARGET_USED

from .classifier_graph import BATCH_DIM, Classifier
from .graph_surgery import free_names, prune_to_outputs, rename_tensor
from .layers import Layer
from .target_layout import NCHW, layout_nodes

TARGET_GRADIENT = "explain/target_gradient"  # dy_c / d(target tensor), before any layout rearrangement
RESERVED = [INPUT, TARGET, LOGITS, ACTIVATIONS, GRADIENTS, TARGET_USED, "explain/seed", TARGET_GRADIENT]


def _standard_names(classifier: Classifier, target: str | None,
                    reserved: list[str] = RESERVED) -> tuple[onnx.ModelProto, str, str | None]:
    """Copy the model (a Classifier's, or a Segmenter's) with its image input called `input` and the `reserved`
    names freed; return (model, logits/scores tensor, target tensor)."""
    model, logits, targets = standard_names_of(classifier, [target], reserved)
    return model, logits, targets[0]


def standard_names_of(classifier: Classifier, targets: list[str | None],
                      reserved: list[str] = RESERVED) -> tuple[onnx.ModelProto, str, list[str | None]]:
    """_standard_names for several target tensors: (model, logits/scores tensor, each target's tensor now)."""
    model = onnx.ModelProto.FromString(classifier.model.SerializeToString())
    moved = free_names(model, [name for name in reserved if name != classifier.input_name])
    logits = moved.get(classifier.logits_name, classifier.logits_name)
    targets = [moved.get(target, target) if target is not None else None for target in targets]
    if classifier.input_name != INPUT:
        rename_tensor(model, classifier.input_name, INPUT)
    return model, logits, targets


def _set_outputs(model: onnx.ModelProto, outputs: list[tuple[str, str, int, list]]) -> None:
    """Replace the graph outputs by Identity copies of (source tensor -> output name, type, shape)."""
    graph = model.graph
    del graph.output[:]
    for source, name, elem, shape in outputs:
        if source != name:
            graph.node.append(helper.make_node("Identity", [source], [name], name=f"output/{name}"))
        graph.output.append(helper.make_tensor_value_info(name, elem, shape))


def build_scorer(classifier: Classifier) -> onnx.ModelProto:
    """The plain forward `input -> logits` (pre-softmax) with a dynamic batch."""
    model, logits, _ = _standard_names(classifier, None)
    _set_outputs(model, [(logits, LOGITS, TensorProto.FLOAT, [BATCH_DIM, classifier.num_classes])])
    prune_to_outputs(model, [LOGITS])
    return model


def _target_seed_nodes(logits: str, num_classes: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes turning `target` (-1 = arg-max) into `target_used` and a one-hot float seed [N, C]."""
    classes = numpy_helper.from_array(np.arange(num_classes, dtype=np.int64).reshape(1, -1), "explain/classes")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "explain/zero")
    one_axis = numpy_helper.from_array(np.array([1], dtype=np.int64), "explain/axis1")
    nodes = [
        helper.make_node("ArgMax", [logits], ["explain/argmax"], axis=1, keepdims=0, select_last_index=0, name="explain/argmax"),
        helper.make_node("Less", [TARGET, "explain/zero"], ["explain/use_argmax"], name="explain/use_argmax"),
        helper.make_node("Where", ["explain/use_argmax", "explain/argmax", TARGET], [TARGET_USED], name="explain/target_used"),
        helper.make_node("Unsqueeze", [TARGET_USED, "explain/axis1"], ["explain/target_col"], name="explain/target_col"),
        helper.make_node("Equal", ["explain/target_col", "explain/classes"], ["explain/onehot_bool"], name="explain/onehot"),
        helper.make_node("Cast", ["explain/onehot_bool"], ["explain/seed"], to=TensorProto.FLOAT, name="explain/seed"),
    ]
    return nodes, [classes, zero, one_axis]


def target_maps(model: onnx.ModelProto, target: str, layer: Layer, gradient: str = TARGET_GRADIENT,
                suffix: str = "") -> tuple[str, str]:
    """(activations, gradients) as [N,K,h,w] maps: the target tensor and its gradient tensor as they are, or the same
    rearrangement of both appended to `model` (see target_layout); `suffix` tells several layers' nodes apart."""
    if layer.layout.kind == NCHW:
        return target, gradient
    activations, gradients = f"explain/activation_map{suffix}", f"explain/gradient_map{suffix}"
    for source, dest, prefix in ((target, activations, f"explain/layout_a{suffix}"),
                                 (gradient, gradients, f"explain/layout_g{suffix}")):
        nodes, constants = layout_nodes(source, dest, layer.layout, layer.source_shape, prefix)
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(constants)
    return activations, gradients


def build_explain(classifier: Classifier, layer: Layer | Sequence[Layer]) -> onnx.ModelProto:
    """The explain graph: inputs `input`, `target`; outputs logits, activations, gradients, target_used; for several
    layers (a sequence) also activations/1, gradients/1, ... of the further layers, from the same backward pass
    (several_layers_graph.py builds both: one layer is its one-element case)."""
    from .several_layers_graph import build_several_layers_explain

    return build_several_layers_explain(classifier, [layer] if isinstance(layer, Layer) else list(layer))
