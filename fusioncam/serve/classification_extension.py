"""Triton's classification extension: an output requested with `class_count` comes back as BYTES strings
"score:index:label" of its top classes instead of its values.

tritonclient's `InferRequestedOutput("probabilities", class_count=3)` sets the output parameter `classification`
to 3. As Triton does it (triton-inference-server/server, src/classification.cc, TopkClassifications): each image's
row holds the min(class_count, classes) highest scores, highest first, each the output's float32 value written
by C++'s std::to_string ("%f", six decimals), ":" and the class index, then ":" and the label when the model has
class names. fusioncam applies it to `probabilities`: the softmax over every class, so the index is the model's
class index (ties in class order; Triton's std::sort leaves their order open).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bundle import Manifest
from .predictions import softmax_rows
from .request_errors import BadRequest

CLASSIFICATION = "classification"  # the output parameter tritonclient sets from class_count
CLASSIFIABLE_OUTPUTS = ("probabilities",)


def class_count_of(output_name: str, parameters: Any, num_classes: int) -> int:
    """The classes to return for an output: its class_count, at most the model's classes (0: no classification);
    BadRequest when it cannot apply.
    parameters: the requested output's, a dict (REST) or gRPC's map of InferParameter."""
    count = _plain(parameters.get(CLASSIFICATION, 0)) if parameters else 0
    if count in (0, None):
        return 0
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadRequest(f"output '{output_name}': class_count ({CLASSIFICATION}) must be a non-negative integer; "
                         f"got {count!r}")
    if output_name not in CLASSIFIABLE_OUTPUTS:
        raise BadRequest(f"output '{output_name}': the classification extension (class_count) applies to "
                         f"{', '.join(CLASSIFIABLE_OUTPUTS)} only")
    return min(count, int(num_classes))


def _plain(value: Any) -> Any:
    """A parameter's value: as sent over REST, or the set field of gRPC's InferParameter (int64_param, ...)."""
    if hasattr(value, "ListFields"):
        fields = value.ListFields()
        return fields[0][1] if fields else None
    return value


def classifications(scores: np.ndarray, class_count: int, class_names: list[str] | None) -> np.ndarray:
    """BYTES [N, class_count] (an object array of bytes): each row's top scores as b"score:index[:label]",
    highest first (ties in class order)."""
    scores = np.asarray(scores, dtype=np.float32)  # the output's own values, as Triton formats them
    order = np.argsort(-scores, axis=1, kind="stable")[:, :class_count]
    rows = []
    for row, indices in zip(scores, order):
        rows.append([_entry(float(row[i]), int(i), class_names) for i in indices])
    return np.array(rows, dtype=np.object_).reshape(len(rows), class_count)


def _entry(score: float, index: int, class_names: list[str] | None) -> bytes:
    text = f"{score:f}:{index}"
    if class_names and index < len(class_names):
        text += f":{class_names[index]}"
    return text.encode("utf-8")


def extension_tensors(requested_outputs: list | None, logits: np.ndarray, manifest: Manifest,
                      all_probabilities: bool) -> dict[str, np.ndarray]:
    """The outputs that replace the plain ones: `probabilities` over every class (all_probabilities, a method
    view's) and each output requested with a class_count, as its classification strings."""
    tensors: dict[str, np.ndarray] = {}
    names = [output.name for output in requested_outputs or []]
    if all_probabilities and "probabilities" in names:
        tensors["probabilities"] = softmax_rows(logits).astype(np.float32)
    for output in requested_outputs or []:
        count = class_count_of(output.name, output.parameters, manifest.num_classes)
        if count:
            tensors[output.name] = classifications(softmax_rows(logits), count, manifest.class_names)
    return tensors
