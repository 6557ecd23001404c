"""The head graph: the part of a classifier after its target layer, as its own ONNX graph (activations in, logits out).

AblationCAM (one channel of A zeroed) and ReciproCAM (A kept at one spatial position) change only the target
layer's activations, so each of their perturbed rows needs the network's tail, not a whole forward: the head graph
is that tail. It exists only when the tail is separable, i.e. the logits depend on the image through the target
layer alone; a skip connection from an earlier layer (or any other path around the target) makes the head need the
image too, and export then writes no head graph and says why (`head_graph_refusal`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import ModelLoadError
from ..graph_names import ACTIVATIONS, INPUT, LOGITS
from .classifier_graph import BATCH_DIM, Classifier
from .explain_graph import _set_outputs, _standard_names
from .graph_surgery import prune_to_outputs, rename_tensor
from .layers import Layer
from .target_layout import NCHW

HEAD_CUT = "head/target_producer_output"  # where the target layer's producer writes in the head graph (pruned away)
HEAD_LOGITS_TOLERANCE = 1e-4  # relative to the largest logit: the head's logits vs the explain graph's, at export


def head_graph_refusal(classifier: Classifier, layer: Layer) -> str:
    """Why `layer` has no head graph ('' when it has one): not an NCHW map, or a tail that also reads the image."""
    if layer.layout.kind != NCHW:
        return (f"target '{layer.name}' is not a channels-first [N, K, h, w] map (its layout is {layer.layout.kind}); "
                f"AblationCAM and ReciproCAM perturb its channels and positions in that layout")
    _, reason = _cut_head(classifier, layer)
    return reason


def build_head(classifier: Classifier, layer: Layer) -> onnx.ModelProto:
    """The head graph: input `activations` [N, K, h, w] (the target layer's output), output `logits` [N, C]. A
    ModelLoadError names the reason when the tail is not separable (head_graph_refusal)."""
    reason = head_graph_refusal(classifier, layer)
    if reason:
        raise ModelLoadError(f"no head graph for target '{layer.name}': {reason}")
    model, _ = _cut_head(classifier, layer)
    return model


def _cut_head(classifier: Classifier, layer: Layer) -> tuple[onnx.ModelProto, str]:
    """The model cut at the target tensor, pruned to the logits; with the reason it is not separable ('' if it is)."""
    model, logits, target = _standard_names(classifier, layer.name, reserved=[INPUT, ACTIVATIONS, LOGITS])
    if target == INPUT:
        return model, "the target layer is the image input itself"
    rename_tensor(model, target, ACTIVATIONS)
    for node in model.graph.node:  # the producer of the target now writes a tensor nothing reads
        for i, name in enumerate(node.output):
            if name == ACTIVATIONS:
                node.output[i] = HEAD_CUT
    k, h, w = layer.shape[1:]
    model.graph.input.append(helper.make_tensor_value_info(ACTIVATIONS, TensorProto.FLOAT, [BATCH_DIM, k, h, w]))
    _set_outputs(model, [(logits, LOGITS, TensorProto.FLOAT, [BATCH_DIM, classifier.num_classes])])
    prune_to_outputs(model, [LOGITS])
    inputs = {value.name for value in model.graph.input}
    if INPUT in inputs:
        readers = [node.name or node.op_type for node in model.graph.node if INPUT in node.input]
        return model, (f"the logits depend on the image through paths that bypass target '{layer.name}' (e.g. a skip "
                       f"connection from an earlier layer; node(s) {', '.join(readers[:3])} read the image), so the "
                       f"network after it is not a function of its activations alone; pick a later layer whose "
                       f"output is the only path to the logits")
    if ACTIVATIONS not in inputs:
        return model, f"the logits do not depend on target '{layer.name}'"
    return model, ""


def check_head(head: Path, explain_session, size: tuple[int, int], origin: str, activations: str = ACTIVATIONS
               ) -> None:
    """The head graph must load and give, on the explain graph's activations (output `activations`: a
    several-layer bundle's activations/i for layer i), the explain graph's logits."""
    import onnxruntime as ort

    from ..graph_names import TARGET

    batch = np.random.default_rng(3).standard_normal((2, 3, *size)).astype(np.float32)
    logits, acts = explain_session.run([LOGITS, activations], {INPUT: batch, TARGET: np.array([-1, -1], dtype=np.int64)})
    try:
        session = ort.InferenceSession(str(head), providers=["CPUExecutionProvider"])
        got = session.run([LOGITS], {ACTIVATIONS: acts})[0]
    except Exception as exc:
        raise ModelLoadError(f"{origin}: the head graph built from it fails in ONNX Runtime: "
                             f"{str(exc).splitlines()[0]}") from None
    scale = max(float(np.abs(logits).max()), 1e-6)
    error = float(np.abs(got - logits).max()) / scale
    if error > HEAD_LOGITS_TOLERANCE:
        raise ModelLoadError(f"{origin}: the head graph's logits differ from the explain graph's by {error:.3g} of "
                             f"the largest logit (limit {HEAD_LOGITS_TOLERANCE}); the tail after the target layer "
                             f"is not a function of its activations alone")
