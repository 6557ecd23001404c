"""Hold a classifier's large weights aside while export rewrites its graph, then store them once for all graphs.

Export copies the whole model many times (folding, shape inference twice, the graph copies of the scorer and the
autodiff). With the weights aside each copy is a few hundred kilobytes instead of the full model (VGG16: 528 MB).
Only large tensors are set aside; export never needs their values (it reads only small constants: shapes, axes,
pads, BatchNorm statistics, exponents), and any tensor built from them keeps working by name. At the end the
bundle's graphs refer to one weights file (ONNX external data) instead of each holding a copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

MIN_ELEMENTS = 1 << 16  # tensors with fewer elements keep their data in the graph
_MARK = "fusioncam:weight-set-aside:"
ALIGNMENT = 4096  # each tensor's data starts at a page boundary of the weights file (mappable as it is)
_PAYLOAD_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _element_count(tensor: onnx.TensorProto) -> int:
    """Number of elements from the dims alone (the data may already be elsewhere)."""
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
            if (_element_count(tensor) < MIN_ELEMENTS or is_set_aside(tensor) or tensor.data_type == TensorProto.STRING
                    or tensor.data_location == TensorProto.EXTERNAL):
                continue
            key = f"{_MARK}{len(self._payloads)}"
            payload = onnx.TensorProto()
            payload.CopyFrom(tensor)
            self._payloads[key] = payload
            for field in _PAYLOAD_FIELDS:
                tensor.ClearField(field)
            tensor.doc_string = key

    def payload(self, placeholder: onnx.TensorProto) -> onnx.TensorProto:
        """The original tensor (name, data, doc_string) a placeholder stands for."""
        payload = self._payloads.get(placeholder.doc_string)
        if payload is None:
            raise RuntimeError(f"initializer {placeholder.name!r} was set aside by another export; its data is lost")
        return payload

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The value of an initializer, whether its data is in the graph or in this stash."""
        return numpy_helper.to_array(self.payload(tensor) if is_set_aside(tensor) else tensor)

    def put_back(self, model: onnx.ModelProto) -> None:
        """Refill every placeholder in `model` with its data (it keeps its current name, renamed or not)."""
        for tensor in model.graph.initializer:
            if is_set_aside(tensor):
                name = tensor.name
                tensor.CopyFrom(self.payload(tensor))
                tensor.name = name

    def file(self, path: Path) -> "WeightsFile":
        """A weights file at `path` that graphs built from this stash's placeholders can be stored against."""
        return WeightsFile(self, path)


class WeightsFile:
    """One file holding each set-aside tensor's data once, however many graphs refer to it."""

    def __init__(self, stash: WeightStash, path: Path) -> None:
        self._stash = stash
        self.path = path
        self._placed: dict[str, tuple[int, int]] = {}  # stash key -> (offset, length)

    def store(self, model: onnx.ModelProto) -> None:
        """Point every placeholder in `model` at its data in this file, appending data not stored yet.

        The graph then holds references (ONNX external data: location, offset, length, relative to the graph's
        own directory), so it stays small: no bundle graph nears protobuf's 2 GB limit."""
        placeholders = [tensor for tensor in model.graph.initializer if is_set_aside(tensor)]
        if not placeholders:
            return
        with open(self.path, "ab") as handle:
            for tensor in placeholders:
                key, payload = tensor.doc_string, self._stash.payload(tensor)
                if key not in self._placed:
                    handle.write(b"\0" * (-handle.tell() % ALIGNMENT))
                    data = _raw_bytes(payload)
                    self._placed[key] = (handle.tell(), len(data))
                    handle.write(data)
                _refer_to_file(tensor, payload.doc_string, self.path.name, *self._placed[key])


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    """A tensor's data as ONNX stores it externally: raw little-endian values."""
    if tensor.raw_data:
        return tensor.raw_data
    array = numpy_helper.to_array(tensor)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _refer_to_file(tensor: onnx.TensorProto, doc_string: str, location: str, offset: int, length: int) -> None:
    """Turn a placeholder into an external-data reference to bytes [offset, offset + length) of `location`."""
    if doc_string:
        tensor.doc_string = doc_string
    else:
        tensor.ClearField("doc_string")  # absent, as in the original (an empty string set would be serialised)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
