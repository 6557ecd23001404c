"""The classification task: one class per image; the explained score is that class's logit (its softmax for p).

Explain graph: images and a class per image (TARGET, -1 for the arg-max); it returns the logits [N, C] and the
class explained (TARGET_USED). Scorer: a masked image alone per row, logits [rows, C] out. The all-zeros image's
logits are the same for every call, so they are computed once per Explainer.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..graph_names import ACTIVATIONS, EXPLAIN_OUTPUTS, GRADIENTS, LOGITS, TARGET, TARGET_USED
from ..runtime.betas import class_probabilities
from ..runtime.explanation import Explanation
from ..runtime.input_checks import resolve_targets
from . import Baseline, Prediction, TensorSpec


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """float64 softmax of host logits along `axis` (the prediction's probabilities)."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return exp / exp.sum(axis=axis, keepdims=True)


def scorer_outputs_of_images(scorer, images) -> Any:
    """The scorer's output for unmasked images (one row each, no extra row inputs), float32 on the device, in the
    scorer's runs. Call inside scorer.in_use()."""
    xp = scorer.xp
    n = int(images.shape[0])
    out = None

    def write(start: int, stop: int, buffer) -> None:
        buffer[: stop - start] = images[start:stop]

    def read(start: int, stop: int, outputs) -> None:
        nonlocal out
        if out is None:
            out = xp.empty((n, *outputs.shape[1:]), dtype=xp.float32)
        out[start:stop] = outputs

    scorer.run(n, write, read)
    return out


class ClassificationTask:
    """A class per image (the Task protocol, tasks/__init__.py)."""

    name = "classification"
    explain_inputs = (TARGET,)
    explain_outputs = EXPLAIN_OUTPUTS
    row_inputs: tuple[str, ...] = ()
    scorer_output = LOGITS
    compat_note = None

    def explain_feed(self, manifest, n: int, targets, regions, class_names: Sequence[str] | None) -> dict[str, np.ndarray]:
        """TARGET int64 [N] (-1: the arg-max); regions= is refused (it belongs to segmentation bundles)."""
        target_array = resolve_targets(targets, n, manifest.num_classes, class_names)
        if regions is not None:
            raise InputError("regions= applies to segmentation bundles only; this bundle explains image classes")
        return {TARGET: target_array}

    def explain_output_specs(self, manifest) -> dict[str, TensorSpec]:
        features = (manifest.channels, *manifest.feature_size)
        return {LOGITS: TensorSpec((manifest.num_classes,), "float"), ACTIVATIONS: TensorSpec(features, "float"),
                GRADIENTS: TensorSpec(features, "float"), TARGET_USED: TensorSpec((), "int64")}

    def row_input_specs(self, manifest) -> dict[str, TensorSpec]:
        return {}

    def scorer_output_shape(self, manifest) -> tuple[int, ...]:
        return (manifest.num_classes,)

    def image_targets(self, graph: Mapping[str, Any]) -> Any:
        """The explained classes, int64 [N]: indexing them by image gives the rows' classes."""
        return graph[TARGET_USED]

    def check_explained(self, graph_on_host, names, class_name) -> None:
        """Every class can be explained."""

    def row_feed(self, rows: Any) -> dict[str, Any]:
        """Nothing beside the masked image."""
        return {}

    def row_scores(self, xp, outputs, rows):
        """Each row's logit at its class."""
        return outputs[xp.arange(int(outputs.shape[0])), rows]

    def row_probabilities(self, xp, outputs, rows):
        """Each row's softmax probability at its class, float64."""
        return class_probabilities(xp, outputs, rows)

    def constant_baseline(self, scorer) -> Any:
        """The all-zeros image's logits [C] (float32, on the device), scored once."""
        zeros = scorer.xp.zeros((1, 3, *scorer.backend.input_buffer().shape[2:]), dtype=scorer.xp.float32)
        return scorer_outputs_of_images(scorer, zeros)[0]

    def baseline(self, scorer, targets, constant, clock) -> Baseline:
        """z0's logit and probability at each image's class, from the logits scored once."""
        xp = scorer.xp
        logits = xp.broadcast_to(constant, (int(targets.shape[0]), int(constant.shape[0])))
        return Baseline(scores=constant[targets], probabilities=class_probabilities(xp, logits, targets))

    def explanation(self, fields: dict[str, Any], graph: Mapping[str, Any], xp, to_host) -> Explanation:
        """classes: the explained class; probabilities: its softmax on the image; logits: the explain pass's."""
        classes = graph[TARGET_USED]
        return Explanation(
            classes=to_host(classes).astype(np.int64, copy=False),
            probabilities=to_host(class_probabilities(xp, graph[LOGITS], classes)).astype(np.float64, copy=False),
            logits=to_host(graph[LOGITS]).astype(np.float32, copy=False),
            **fields)

    def image_facts(self, explanation, index: int) -> dict[str, Any]:
        return {"class": int(explanation.classes[index]), "class_name": explanation.class_name(index),
                "probability": float(explanation.probabilities[index])}

    def predict(self, scorer, images) -> Prediction:
        """The scorer's logits of the images, their softmax and arg-max."""
        logits = np.asarray(scorer.to_host(scorer_outputs_of_images(scorer, images)), dtype=np.float32)
        return Prediction(logits=logits, probabilities=softmax(logits), classes=logits.argmax(axis=1).astype(np.int64))


CLASSIFICATION = ClassificationTask()

__all__ = ["CLASSIFICATION", "ClassificationTask", "scorer_outputs_of_images", "softmax"]
