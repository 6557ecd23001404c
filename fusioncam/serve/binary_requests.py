"""v2 REST requests in the binary-tensor extension, read without KServe's copy of every element into a list.

A request in the extension (what `tritonclient.http` sends by default) is a JSON header of
Inference-Header-Content-Length bytes followed by each binary input's raw bytes. KServe's InferRequest.from_bytes
turns every binary input into a Python list, one `.item()` per element (a preprocessed 224x224 image: 150,528
calls, most of the server's CPU time per request), and decodes BYTES elements as UTF-8 text, so raw JPEG or PNG
bytes there fail. `binary_infer_request` keeps each input's raw bytes, which InferInput.as_numpy reads directly
(np.frombuffer; BYTES elements as bytes), and FusionCamDataPlane uses it for every binary REST request. JSON
requests and gRPC go through KServe's own code unchanged; a v2 body without the header and without a JSON content
type is read as a JSON request when it is one (Triton accepts it too).
"""

from __future__ import annotations

from typing import Any

import orjson
from cloudevents.sdk.converters.util import has_binary_headers
from kserve.constants.constants import PredictorProtocol
from kserve.protocol.dataplane import JSON_HEADERS, DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

from .json_body import parse_json_body
from .request_errors import BadRequest

HEADER_LENGTH = "inference-header-content-length"


def binary_infer_request(body: bytes, json_length: int, model_name: str,
                         header: Any = None) -> InferRequest:
    """The InferRequest of a binary-extension body, each binary input's bytes kept as sent (no per-element copy).
    header: the JSON header already parsed (a JSON body without binary inputs: json_length is the body's length)."""
    if not 0 < json_length <= len(body):
        raise BadRequest(f"the {HEADER_LENGTH} header says {json_length} bytes of JSON, but the body has {len(body)} "
                         f"bytes; it must give the length of the JSON header that starts the body")
    if header is None:
        try:
            header = orjson.loads(body[:json_length])
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the first {json_length} bytes of the body ({HEADER_LENGTH}) are not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadRequest('the JSON header of a binary v2 request is an object with "inputs": [...]')
    inputs, start = [], json_length
    for position, entry in enumerate(header["inputs"]):
        tensor, start = _binary_input(entry, position, body, start, model_name)
        inputs.append(tensor)
    if start != len(body):
        raise BadRequest(f"the body has {len(body) - start} bytes after the binary inputs its header declares "
                         f"(binary_data_size): each binary input's size must be given exactly")
    outputs = header.get("outputs")
    if outputs is not None and (not isinstance(outputs, list)
                                or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs)):
        raise BadRequest('"outputs" must be a list of objects with a "name"')
    return InferRequest(model_name=model_name, request_id=header.get("id"), parameters=header.get("parameters"),
                        infer_inputs=inputs, request_outputs=None if outputs is None else
                        [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in outputs])


def _binary_input(entry: Any, position: int, body: bytes, start: int, model_name: str) -> tuple[InferInput, int]:
    """One input of the header, with its data (JSON "data", or the next binary_data_size bytes of the body)."""
    if not isinstance(entry, dict) or not all(key in entry for key in ("name", "shape", "datatype")):
        raise BadRequest(f"input {position} of the request needs a name, a shape and a datatype")
    parameters = entry.get("parameters") or None
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f"input '{entry['name']}': parameters must be a JSON object")
    tensor = InferInput(name=entry["name"], shape=entry["shape"], datatype=entry["datatype"], parameters=parameters)
    if entry.get("data") is not None:
        tensor.data = entry["data"]
        return tensor, start
    size = (parameters or {}).get("binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"input '{entry['name']}' of model {model_name} has neither JSON data nor a binary_data_size "
                         f"(a byte count) in its parameters")
    if start + size > len(body):
        raise BadRequest(f"input '{entry['name']}' declares {size} bytes of binary data, but only {len(body) - start} "
                         f"follow in the body")
    tensor._raw_data = body[start:start + size]
    return tensor, start + size


class FusionCamDataPlane(DataPlane):
    """KServe's DataPlane, reading binary-extension REST requests with binary_infer_request, v2 JSON bodies sent
    without `Content-Type: application/json` (tritonclient.http with binary_data=False, curl -d) as JSON, as Triton
    does, and v1 JSON bodies with a specific reason when they are not JSON (json_body.py)."""

    def decode(self, body, headers, protocol_version: str = PredictorProtocol.REST_V1.value,
               model_name: str | None = None):
        if (isinstance(body, (bytes, bytearray)) and protocol_version.lower() != PredictorProtocol.REST_V2.value
                and not has_binary_headers(headers or {})
                and (headers or {}).get("content-type", JSON_HEADERS[0]) in JSON_HEADERS):
            body = parse_json_body(bytes(body), "the request body")
        return super().decode(body, headers, protocol_version, model_name)

    def decode_inference_request(self, body, headers, model_name: str) -> InferRequest:
        if isinstance(body, (bytes, bytearray)):
            length = (headers or {}).get(HEADER_LENGTH)
            if length is None:  # the whole body is the JSON request (no binary inputs after it)
                if not body.lstrip().startswith(b"{"):
                    raise BadRequest(f"a v2 request body is JSON (an object with \"inputs\"), or a JSON header whose "
                                     f"length the {HEADER_LENGTH} header gives followed by binary inputs; this body "
                                     f"(Content-Type {(headers or {}).get('content-type')}) starts with "
                                     f"{bytes(body[:16])!r}")
                body = bytes(body)
                header = parse_json_body(body, "the v2 request body")  # a specific reason (NaN, position) if not JSON
                return binary_infer_request(body, len(body), model_name, header)
            if not str(length).isdigit():
                raise BadRequest(f"the {HEADER_LENGTH} header must be a byte count; got {length!r}")
            return binary_infer_request(bytes(body), int(length), model_name)
        return super().decode_inference_request(body, headers, model_name)
