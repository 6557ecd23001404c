"""One explain graph for several target layers: every layer's activations and gradients of the same target score from
one forward and one backward pass (pytorch-grad-cam's `target_layers=[model.layer3, model.layer4]`).

The reverse walk (autodiff.differentiate) starts at the logits and stops at every layer no other layer is computed
from; a layer the walk passes through (layer4 on the way to layer3) gets the total gradient reaching it (differentiate's
`also`), so the backward runs once however many layers are asked for. Layers on parallel branches (a feature
pyramid's levels, each read by the head) are each a stopping point of the same walk. The first layer keeps the
one-layer names (activations, gradients); the further ones are activations/1, gradients/1, ...
(graph_names.layer_activations).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from ..errors import LayerError
from ..graph_names import INPUT, LOGITS, TARGET, TARGET_USED, layer_activations, layer_gradients
from .classifier_graph import BATCH_DIM, Classifier
from .explain_graph import (TARGET_GRADIENT, _set_outputs, _target_seed_nodes, standard_names_of, target_maps)
from .graph_surgery import prune_to_outputs
from .layers import Layer


def distinct_layers(names: list[str]) -> None:
    """A LayerError when the same target tensor is asked for twice."""
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise LayerError(f"target layers name the same tensor more than once ({', '.join(repeated)}); give each "
                         f"layer once")


def several_layer_gradients(count: int) -> dict[int, str]:
    """The gradient tensor of each of `count` layers in the differentiated graph (the first's is TARGET_GRADIENT)."""
    return {index: TARGET_GRADIENT if index == 0 else f"{TARGET_GRADIENT}/{index}" for index in range(count)}


def build_several_layers_explain(classifier: Classifier, layers: list[Layer]) -> onnx.ModelProto:
    """The explain graph of `layers` (one or more, in the user's order): inputs `input`, `target`; outputs logits,
    activations, gradients, target_used, then activations/i, gradients/i for each further layer i."""
    names = [layer.name for layer in layers]
    distinct_layers(names)
    model, logits, tensors = standard_names_of(classifier, names)
    if INPUT in tensors:
        raise LayerError("a target layer cannot be the image input itself; pick feature maps")
    graph = model.graph
    graph.input.append(onnx.helper.make_tensor_value_info(TARGET, TensorProto.INT64, [BATCH_DIM]))
    nodes, constants = _target_seed_nodes(logits, classifier.num_classes)
    graph.node.extend(nodes)
    graph.initializer.extend(constants)
    gradient_of = several_layer_gradients(len(layers))
    from .autodiff import differentiate

    model = differentiate(model, wrt=tensors[0], of=logits, seed="explain/seed", grad_name=TARGET_GRADIENT,
                          also={tensors[i]: gradient_of[i] for i in range(1, len(layers))})
    outputs = [(logits, LOGITS, TensorProto.FLOAT, [BATCH_DIM, classifier.num_classes])]
    for index, layer in enumerate(layers):
        activations, gradients = target_maps(model, tensors[index], layer, gradient_of[index],
                                             suffix="" if index == 0 else f"/{index}")
        k, h, w = layer.shape[1:]
        outputs.append((activations, layer_activations(index), TensorProto.FLOAT, [BATCH_DIM, k, h, w]))
        outputs.append((gradients, layer_gradients(index), TensorProto.FLOAT, [BATCH_DIM, k, h, w]))
        if index == 0:
            outputs.append((TARGET_USED, TARGET_USED, TensorProto.INT64, [BATCH_DIM]))
    _set_outputs(model, outputs)
    prune_to_outputs(model, [output[1] for output in outputs])
    return model
