"""Open Inference Protocol v2 (REST and gRPC, through KServe): tensors in, tensors out, and the model's metadata.

Input: exactly one tensor, told apart by its datatype: BYTES [N] or [N, 1] encoded images (raw bytes over gRPC;
base64 text over REST, where KServe carries BYTES elements as UTF-8 text), FP32 [N, 3, H, W] preprocessed
images, or UINT8 [N, h, w, 3] RGB pixels (resized like files). Outputs: `probabilities` FP32 [N, k] and
`classes` INT64 [N, k] (the top k, most probable first), `class_names` BYTES [N, k], `explained_class` INT64 [N],
`explained_probability` FP32 [N], and one FP32 [N, H, W] map per method, named after it. The request's `outputs`
list picks the outputs (a method named there is computed); without it the parameters' methods (default fusion)
come back with every other output. Parameters: methods, target, top_k.

An input under another name is refused (its name says which form it is). An output requested with Triton's
classification extension (`class_count`, on `probabilities`) comes back as BYTES "score:index:label" strings
(classification_extension.py).

A segmentation bundle (tasks/segmentation_payloads.py) takes an optional second input, `region` (BOOL or UINT8 masks
[N, H, W], or FP32 or INT32 boxes [N, 4]), or the parameter `region` (predicted, all or x0,y0,x1,y1; see
serve/regions.py), and answers `segmentation` INT64 [N, H', W'] (each output pixel's class), `classes` and
`class_names` [N, k] (the k classes on most pixels), `pixel_fractions` FP32 [N, k], `explained_class`,
`explained_probability` (the region probability P) and `region_weights` FP32 [N, H', W'] instead of the
classifier's outputs.

A detection bundle (tasks/detection_payloads.py) takes the parameters `min_score`, `max_instances` and `instances`
(JSON text) and answers `boxes` [N, I, 4], `scores` [N, I], `classes` [N, I], `class_names` [N, I], `anchors`
[N, I], `instance_count` [N] and one [N, I, H, W] map per method, padded past each image's instance count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferInput, InferOutput, InferRequest, InferResponse, to_http_parameters

from ..bundle import Manifest
from ..runtime.methods import METHODS
from .batching import JobResult
from .classification_extension import class_count_of, extension_tensors
from .decoding import ImageDecoder, encoded_bytes
from .options import ServeOptions
from ..tasks.payloads import payloads_for
from .regions import REGION_INPUT
from .request_errors import BadRequest
from .request_settings import methods_of, settings_of, target_of
from .served_layers import served_methods
from .v1 import ParsedRequest

INPUT_NAMES = {"BYTES": "image_bytes", "FP32": "image_tensor", "UINT8": "image_rgb"}


def input_types(manifest: Manifest) -> list[dict]:
    """The three accepted input forms (send one of them per request)."""
    height, width = manifest.input_size
    return [
        {"name": INPUT_NAMES["BYTES"], "datatype": "BYTES", "shape": [-1]},
        {"name": INPUT_NAMES["FP32"], "datatype": "FP32", "shape": [-1, 3, height, width]},
        {"name": INPUT_NAMES["UINT8"], "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
        *payloads_for(manifest).v2_input_types(manifest),  # a segmentation bundle's optional region
    ]


def output_types(manifest: Manifest) -> list[dict]:
    """Predictions, the explained target (the task's: tasks/*_payloads.py), and one map per method the bundle
    answers (served_layers.py: a several-layer bundle's are its layers' aggregated maps, FullGrad's and ShapleyCAM's
    left out)."""
    height, width = manifest.input_size
    payloads = payloads_for(manifest)
    shape = payloads.v2_map_shape(manifest) if hasattr(payloads, "v2_map_shape") else [-1, height, width]
    return [
        *payloads.v2_output_types(manifest),
        *({"name": method, "datatype": "FP32", "shape": shape} for method in served_methods(manifest)),
    ]


def parse_v2(request: InferRequest, decoder: ImageDecoder, manifest: Manifest,
             options: ServeOptions) -> tuple[ParsedRequest, tuple[str, ...]]:
    """The request's images, targets and settings, and the output names to send back."""
    parameters = to_http_parameters(request.parameters) if request.parameters else {}
    parameters.pop("binary_data_output", None)
    requested = [output.name for output in request.request_outputs or []]
    payloads = payloads_for(manifest)
    prediction_outputs, explanation_outputs = payloads.v2_prediction_outputs, payloads.v2_explanation_outputs
    known = (*prediction_outputs, *explanation_outputs, *METHODS)
    unknown = [name for name in requested if name not in known]
    if unknown:
        raise BadRequest(f"unknown output(s) {', '.join(unknown)}; this model has {', '.join(known)}")
    for output in request.request_outputs or []:  # a class_count that cannot apply is refused before any work
        class_count_of(output.name, output.parameters, manifest.num_classes)
    asked = tuple(name for name in requested if name in METHODS)
    if parameters.get("methods") is not None:
        asked = tuple(m for m in METHODS if m in set(asked) | set(methods_of(parameters["methods"])))
    methods = asked if (asked or requested) else ("fusion",)
    own = getattr(payloads, "request_parameters", ())  # parameters the task reads itself (detection's instances)
    settings = settings_of({**{k: v for k, v in parameters.items() if k not in own}, "methods": list(methods) or None},
                           (), options.default_top_k, manifest.num_classes, timeout_unit="us")  # Triton's timeout parameter: microseconds
    if requested:
        outputs = tuple(requested)
    else:
        outputs = (*prediction_outputs, *(explanation_outputs if methods else ()), *methods)
    if not settings.methods and any(name in explanation_outputs for name in outputs):
        raise BadRequest(f"outputs {', '.join(explanation_outputs)} need a method: name one in outputs or parameters")
    region_tensor = next((t for t in request.inputs if t.name == REGION_INPUT), None)
    images = _input_images([t for t in request.inputs if t is not region_tensor], decoder, options)
    if hasattr(payloads, "v2_instances"):  # detection: what to explain per image (its targets are instances)
        specs = payloads.v2_instances(parameters, region_tensor, len(images))
        return ParsedRequest(images=images, targets=np.full(len(images), -1, np.int64), settings=settings,
                             regions=specs), outputs
    target = parameters.get("target")
    targets = np.asarray([target_of(target, manifest, f"instance {i}") for i in range(len(images))], dtype=np.int64)
    regions = payloads.v2_regions(region_tensor, parameters.get("region"), len(images), tuple(manifest.input_size))
    return ParsedRequest(images=images, targets=targets, settings=settings, regions=regions), outputs


def _input_images(inputs: list, decoder: ImageDecoder, options: ServeOptions) -> list:
    """The one image input tensor (the inputs besides a region) as model images, each checked on its own."""
    if len(inputs) != 1:
        raise BadRequest(f"send exactly one image input tensor (one of {', '.join(INPUT_NAMES.values())}); got "
                         f"{len(inputs)}")
    tensor: InferInput = inputs[0]
    if tensor.name not in INPUT_NAMES.values():
        raise BadRequest(f"input '{tensor.name}' is not an input of this model; it takes one of "
                         f"{', '.join(f'{name} ({datatype})' for datatype, name in INPUT_NAMES.items())}")
    if tensor.datatype not in INPUT_NAMES:
        raise BadRequest(f"input '{tensor.name}' has datatype {tensor.datatype}; send BYTES (encoded images), FP32 "
                         f"[N, 3, H, W] (preprocessed) or UINT8 [N, h, w, 3] (RGB)")
    if INPUT_NAMES[tensor.datatype] != tensor.name:
        expected = next(datatype for datatype, name in INPUT_NAMES.items() if name == tensor.name)
        raise BadRequest(f"input '{tensor.name}' is {expected}; got datatype {tensor.datatype} (send "
                         f"{tensor.datatype} as {INPUT_NAMES[tensor.datatype]})")
    shape = [int(d) for d in tensor.shape]
    if not shape or shape[0] < 1:
        raise BadRequest(f"input '{tensor.name}' has shape {shape}; the first dimension counts the images (N >= 1)")
    if shape[0] > options.max_instances:
        raise BadRequest(f"{shape[0]} images in one request; this server takes at most {options.max_instances} "
                         f"(--max-instances): split the request")
    try:
        array = tensor.as_numpy()
    except Exception as exc:  # KServe's own reshape/decoding of the tensor data
        raise BadRequest(f"input '{tensor.name}' cannot be read as {tensor.datatype} {shape}: {exc}") from None
    if tensor.datatype == "BYTES":
        if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 1):
            raise BadRequest(f"input '{tensor.name}' (BYTES) has shape {shape}; send [N] or [N, 1], one encoded image each")
        return [decoder.from_encoded(_element(value, f"instance {i}"), f"instance {i}")
                for i, value in enumerate(array.reshape(-1))]
    if tensor.datatype == "FP32":
        if array.ndim != 4:
            raise BadRequest(f"input '{tensor.name}' (FP32) has shape {shape}; send preprocessed images [N, 3, H, W]")
        return [decoder.from_tensor(array[i], f"instance {i}") for i in range(array.shape[0])]
    if array.ndim != 4 or array.shape[3] != 3:
        raise BadRequest(f"input '{tensor.name}' (UINT8) has shape {shape}; send RGB pixels [N, h, w, 3]")
    return [decoder.from_rgb(np.ascontiguousarray(array[i]), f"instance {i}") for i in range(array.shape[0])]


def _element(value: Any, label: str) -> bytes | str:
    """A BYTES element as KServe hands it over: bytes (gRPC and binary REST: the file's raw bytes, or base64 text)
    or text (JSON REST). Bytes that are neither an image file nor base64 text are 'not an image' (raw bytes are the
    documented form, so a failed base64 reading is not the problem to report)."""
    if isinstance(value, (bytes, bytearray)) and value:
        try:
            encoded_bytes(value, label)
        except BadRequest:
            raise BadRequest(f"{label}: not an image: its {len(value):,} bytes are neither an image file (PNG, JPEG, "
                             f"...) nor base64 text") from None
        return bytes(value)
    return value if isinstance(value, (bytes, str)) else str(value)


def v2_response(request: InferRequest, parsed: ParsedRequest, result: JobResult, outputs: tuple[str, ...],
                manifest: Manifest, model_name: str, all_probabilities: bool = False) -> InferResponse:
    """The requested outputs as tensors (binary over gRPC, and over REST when the client asks for binary data).

    all_probabilities: `probabilities` holds every class's probability in class order [N, classes] (a method
    view's output, method_views.py) instead of the top k."""
    payloads = payloads_for(manifest)
    tensors = payloads.v2_tensors(result.logits, result.classes, result.probabilities, result.facts,
                                  parsed.settings.top_k, manifest, outputs)
    maps = {method: result.maps[method] for method in parsed.settings.methods}
    if hasattr(payloads, "trimmed_maps"):  # detection: [N, I, H, W] to this request's largest instance count
        maps = payloads.trimmed_maps(maps, result.facts)
    tensors.update({method: array.astype(np.float32, copy=False) for method, array in maps.items()})
    tensors.update(extension_tensors(request.request_outputs, result.logits, manifest, all_probabilities))
    infer_outputs = []
    for name in outputs:
        array = tensors[name]
        output = JsonListInferOutput(name=name, shape=list(array.shape), datatype=_datatype(array))
        output.set_data_from_numpy(array, binary_data=True)  # raw bytes: KServe's to_grpc cannot take an ndarray
        infer_outputs.append(output)
    return InferResponse(response_id=request.id or "", model_name=model_name, infer_outputs=infer_outputs,
                         use_binary_outputs=request.use_binary_outputs, requested_outputs=request.request_outputs,
                         from_grpc=request.from_grpc)


class JsonListInferOutput(InferOutput):
    """KServe's InferOutput, except that a numeric tensor sent as JSON (a REST client that did not ask for binary
    data) becomes its list with one ndarray.tolist() instead of KServe's loop of .item() over every element (a
    224x224 map: about 50,000 Python calls). The values are the same Python floats and ints."""

    def set_data_from_numpy(self, output_tensor: np.ndarray, binary_data: bool = True) -> None:
        if binary_data or self.datatype == "BYTES" or not isinstance(output_tensor, np.ndarray) \
                or _DATATYPES.get(output_tensor.dtype) != self.datatype or list(output_tensor.shape) != self.shape:
            super().set_data_from_numpy(output_tensor, binary_data)
            return
        if self._parameters:
            self._parameters.pop("binary_data_size", None)
        self._raw_data = None
        self._data = output_tensor.ravel().tolist()


_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.object_): "BYTES"}


def _datatype(array: np.ndarray) -> str:
    return _DATATYPES[array.dtype]
