"""KServe v1 (`:predict`, `:explain`): instances in, predictions and explanations out, as JSON.

An instance is an encoded image, `{"image_bytes": {"b64": ...}}` (TF Serving), `{"image": {"b64": ...}}` (KServe's
own custom-model and image-transformer samples), `{"data": "<base64>"}` (TorchServe) or `{"b64": ...}`, or a
preprocessed float array [3, H, W] (a nested list, or `{"data": [[[...]]]}`); a dict
instance may carry its own "target" (and, for a segmentation bundle, its own "region": serve/regions.py). Request
parameters: methods, target (one for all, or one per instance), region (segmentation), top_k, return (maps and/or
overlays), colormap, alpha. Predictions and explained targets are written by the bundle's task payloads
(fusioncam/tasks/*_payloads.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bundle import Manifest
from .batching import JobResult
from .decoding import ImageDecoder, ModelImage
from .json_body import parse_json_body
from .options import ServeOptions
from ..tasks.payloads import payloads_for
from .predictions import overlay_png_base64
from .request_errors import BadRequest
from .request_settings import RequestSettings, settings_of, target_of


@dataclass
class ParsedRequest:
    """A request's images (decoded and checked), targets and settings, ready for the batcher."""

    images: list[ModelImage]
    targets: np.ndarray  # int64 [n]; -1 = the image's top class
    settings: RequestSettings
    regions: list | None = None  # segmentation: each image's region (serve/regions.py); None for classifiers

    def stacked(self) -> np.ndarray:
        return np.stack([image.tensor for image in self.images])


def parse_v1(payload: Any, verb: str, decoder: ImageDecoder, manifest: Manifest, options: ServeOptions) -> ParsedRequest:
    """Check and decode a v1 body; every problem is a BadRequest naming the instance."""
    if isinstance(payload, (bytes, bytearray)):  # sent without Content-Type: application/json (curl -d): KServe passes it raw
        payload = parse_json_body(bytes(payload), "the request body")
    if not isinstance(payload, dict) or "instances" not in payload:
        raise BadRequest('a v1 request is a JSON object {"instances": [...], "parameters": {...}}')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise BadRequest('"instances" must be a non-empty list of images')
    if len(instances) > options.max_instances:
        raise BadRequest(f"{len(instances)} instances in one request; this server takes at most {options.max_instances} "
                         f"(--max-instances): split the request")
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest('"parameters" must be a JSON object')
    default_methods = ("fusion",) if verb == "explain" else ()
    if verb == "predict" and parameters.get("methods") is not None:
        raise BadRequest("':predict' returns predictions only; send methods to ':explain'")
    payloads = payloads_for(manifest)
    own = getattr(payloads, "request_parameters", ())  # parameters the task reads itself (detection's instances)
    settings = settings_of({k: v for k, v in parameters.items() if k not in own}, default_methods,
                           options.default_top_k, manifest.num_classes)
    if hasattr(payloads, "v1_instances"):  # detection: what to explain per image (its targets are instances)
        regions = payloads.v1_instances(parameters, instances)
        images = [_instance_image(instance, decoder, f"instance {i}") for i, instance in enumerate(instances)]
        return ParsedRequest(images=images, targets=np.full(len(images), -1, np.int64), settings=settings,
                             regions=regions)
    shared_targets = _shared_targets(parameters.get("target"), len(instances))
    images, targets = [], []
    for i, instance in enumerate(instances):
        label = f"instance {i}"
        target = shared_targets[i]
        if isinstance(instance, dict) and "target" in instance:
            target = instance["target"]
        targets.append(target_of(target, manifest, label))
        images.append(_instance_image(instance, decoder, label))
    regions = payloads.v1_regions(parameters.get("region"), instances, tuple(manifest.input_size),
                                  options.max_image_pixels)
    return ParsedRequest(images=images, targets=np.asarray(targets, dtype=np.int64), settings=settings,
                         regions=regions)


def _shared_targets(value: Any, count: int) -> list[Any]:
    """The request-level target: one for every instance, or a list with one per instance."""
    if isinstance(value, list):
        if len(value) != count:
            raise BadRequest(f"parameter 'target' lists {len(value)} targets for {count} instances; give one per instance, "
                             f"or one for all")
        return value
    return [value] * count


WRAPPED_IMAGE_KEYS = ("image_bytes", "image")  # keys whose value is {"b64": "<base64 text>"}


def _instance_image(instance: Any, decoder: ImageDecoder, label: str) -> ModelImage:
    """One instance as a model image: an encoded image in one of the four spellings, or a float array."""
    if isinstance(instance, list):
        return decoder.from_tensor(instance, label)
    if not isinstance(instance, dict):
        raise BadRequest(f'{label}: expected {{"image_bytes": {{"b64": ...}}}}, {{"image": {{"b64": ...}}}}, '
                         f'{{"data": "<base64>"}}, {{"b64": ...}} or a float array [3, H, W]; got {type(instance).__name__}')
    for key in WRAPPED_IMAGE_KEYS:
        if key in instance:
            inner = instance[key]
            if not isinstance(inner, dict) or not isinstance(inner.get("b64"), str):
                raise BadRequest(f'{label}: "{key}" must be {{"b64": "<base64 text>"}}')
            return decoder.from_encoded(inner["b64"], label)
    for key in ("b64", "data"):
        if key in instance:
            value = instance[key]
            if isinstance(value, str):
                return decoder.from_encoded(value, label)
            if isinstance(value, list):
                return decoder.from_tensor(value, label)
            raise BadRequest(f'{label}: "{key}" must be base64 text or a float array [3, H, W]; got {type(value).__name__}')
    raise BadRequest(f'{label}: no image in it: give "image_bytes", "image", "data" or "b64" (keys found: '
                     f"{', '.join(sorted(map(str, instance))) or 'none'})")


def v1_response(request: ParsedRequest, result: JobResult, manifest: Manifest, verb: str) -> dict:
    """{"predictions": [...]} for :predict; plus "explanations" (one per instance) for :explain."""
    payloads = payloads_for(manifest)
    predictions = payloads.v1_predictions(result.logits, request.settings.top_k, manifest)
    if verb != "explain":
        return {"predictions": predictions}
    settings = request.settings
    explanations = []
    for i, image in enumerate(request.images):
        if hasattr(payloads, "v1_explanation"):  # detection: one entry per instance, with its own maps
            explanations.append(payloads.v1_explanation(result, i, settings, image.picture, manifest))
            continue
        entry: dict[str, Any] = {"target": payloads.v1_target(result.classes, result.probabilities, result.facts, i,
                                                              manifest)}
        if "maps" in settings.returns:
            # float32 arrays as they are: KServe answers v1 with ORJSONResponse, which writes NumPy arrays natively
            # (each value's shortest float32 spelling, read back exactly) and ten times faster than .tolist() and json
            entry["maps"] = {method: np.ascontiguousarray(result.maps[method][i]) for method in settings.methods}
        if "overlays" in settings.returns:
            entry["overlays"] = {method: overlay_png_base64(image.picture, result.maps[method][i], settings.colormap,
                                                            settings.alpha) for method in settings.methods}
        explanations.append(entry)
    return {"predictions": predictions, "explanations": explanations, "methods": list(settings.methods),
            "batch_images": result.batch_images}
