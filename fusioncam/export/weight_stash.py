"""Hold a classifier's large weights aside while export rewrites its graph, and put them back into each graph built.

Export copies the whole model many times (folding, shape inference twice, the graph copies of the scorer and the
autodiff). With the weights aside each copy is a few hundred kilobytes instead of the full model (VGG16: 528 MB).
Only large tensors are set aside; export never needs their values (it reads only small constants: shapes, axes,
pads, BatchNorm statistics, exponents), and any tensor built from them keeps working by name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

MIN_ELEMENTS = 1 << 16  # tensors with fewer elements keep their data in the graph
_MARK = "fusioncam:weight-set-aside:"
_PAYLOAD_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _element_count(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


def is_set_aside(tensor: onnx.TensorProto) -> bool:
    """True when `tensor` is a placeholder whose data is held in a WeightStash."""
    return tensor.doc_string.startswith(_MARK)


class WeightStash:
    """The payloads of a model's large initializers, keyed by a mark left in each placeholder's doc_string."""

    def __init__(self) -> None:
        self._payloads: dict[str, onnx.TensorProto] = {}

    def __len__(self) -> int:
        return len(self._payloads)

    def set_aside(self, model: onnx.ModelProto) -> None:
        """Move the data of every initializer of at least MIN_ELEMENTS elements into the stash (in place)."""
        for tensor in model.graph.initializer:
            if _element_count(tensor) < MIN_ELEMENTS or is_set_aside(tensor):
                continue
            key = f"{_MARK}{len(self._payloads)}"
            payload = onnx.TensorProto()
            payload.CopyFrom(tensor)
            self._payloads[key] = payload
            for field in _PAYLOAD_FIELDS:
                tensor.ClearField(field)
            tensor.doc_string = key

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The value of an initializer, whether its data is in the graph or in this stash."""
        return numpy_helper.to_array(self._payloads[tensor.doc_string] if is_set_aside(tensor) else tensor)

    def put_back(self, model: onnx.ModelProto) -> None:
        """Refill every placeholder in `model` with its data (it keeps its current name, renamed or not)."""
        for tensor in model.graph.initializer:
            if not is_set_aside(tensor):
                continue
            payload = self._payloads.get(tensor.doc_string)
            if payload is None:
                raise RuntimeError(f"initializer {tensor.name!r} was set aside by another export; its data is lost")
            name = tensor.name
            tensor.CopyFrom(payload)
            tensor.name = name
